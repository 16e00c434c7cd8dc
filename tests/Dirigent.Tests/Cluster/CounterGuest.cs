using System.Net.WebSockets;
using System.Text;
using System.Text.RegularExpressions;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// A Multiboot guest with state to carry across a migration, talked to over its console (COM1, polled: no
/// interrupts). It prints <see cref="ReadyLine"/>, then loops forever: a short spin, one increment of a counter in
/// RAM, a look at COM1. A received printable byte other than '?' is appended to a note in RAM (up to 63 bytes); '?'
/// increments a query number in RAM and prints <c>Q=qqqqqqqq C=cccccccc M=note\r\n</c> (hex). A guest that was
/// restarted instead of moved has lost its note, numbers its answers from 1 again and counts from 0; one that was
/// moved continues all three.
/// </summary>
internal static class CounterGuest
{
    public const string ReadyLine = "counter guest ready";
    private const uint LoadAddr = 0x10_0000;
    private const uint Counter = 0x20_0000, Queries = 0x20_0004, NoteLen = 0x20_0008, Note = 0x20_0100;

    public static byte[] Build(int spin = 20_000)
    {
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        var main = a.CreateLabel();
        var spinLoop = a.CreateLabel();
        var report = a.CreateLabel();
        var hex8 = a.CreateLabel();
        var noteLoop = a.CreateLabel();
        var noteDone = a.CreateLabel();
        a.mov(esp, 0x8_0000);
        Lifecycle.TinyGuest.EmitWriteCom1(a, ReadyLine + "\r\n");

        a.Label(ref main);
        a.mov(ecx, (uint)spin);
        a.Label(ref spinLoop);
        a.dec(ecx);
        a.jnz(spinLoop);
        a.inc(__dword_ptr[Counter]);
        a.mov(dx, 0x3FD);
        a.@in(al, dx);
        a.test(al, 0x01);          // LSR.DR: a received byte waits in RBR
        a.jz(main);
        a.mov(dx, 0x3F8);
        a.@in(al, dx);
        a.cmp(al, (byte)'?');
        a.je(report);
        a.cmp(al, 0x20);           // CR, LF and other control bytes are not part of the note
        a.jb(main);
        a.mov(edi, __dword_ptr[NoteLen]);
        a.cmp(edi, 63);
        a.jae(main);
        a.mov(__byte_ptr[edi + Note], al);
        a.inc(__dword_ptr[NoteLen]);
        a.jmp(main);

        a.Label(ref report);
        a.inc(__dword_ptr[Queries]);
        Lifecycle.TinyGuest.EmitWriteCom1(a, "Q=");
        a.mov(esi, __dword_ptr[Queries]);
        a.call(hex8);
        Lifecycle.TinyGuest.EmitWriteCom1(a, " C=");
        a.mov(esi, __dword_ptr[Counter]);
        a.call(hex8);
        Lifecycle.TinyGuest.EmitWriteCom1(a, " M=");
        a.xor(edi, edi);
        a.Label(ref noteLoop);
        a.cmp(edi, __dword_ptr[NoteLen]);
        a.jae(noteDone);
        a.mov(al, __byte_ptr[edi + Note]);
        Lifecycle.TinyGuest.EmitPutc(a);
        a.inc(edi);
        a.jmp(noteLoop);
        a.Label(ref noteDone);
        a.nop();                   // (one label per instruction: the write below starts with its own)
        Lifecycle.TinyGuest.EmitWriteCom1(a, "\r\n");
        a.jmp(main);

        // ESI as 8 hex digits (EAX, ECX, EDX used).
        var digit = a.CreateLabel();
        var put = a.CreateLabel();
        a.Label(ref hex8);
        a.mov(ecx, 8);
        a.Label(ref digit);
        a.rol(esi, 4);
        a.mov(eax, esi);
        a.and(eax, 0xF);
        a.add(al, (byte)'0');
        a.cmp(al, (byte)'9');
        a.jbe(put);
        a.add(al, (byte)('a' - '9' - 1));
        a.Label(ref put);
        Lifecycle.TinyGuest.EmitPutc(a);
        a.dec(ecx);
        a.jnz(digit);
        a.ret();

        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        return ms.ToArray();
    }

    /// <summary>One answer to '?': the query number, the counter and the note.</summary>
    public sealed record Answer(uint Query, uint Count, string Note);

    private static readonly Regex AnswerLine = new(@"Q=([0-9a-f]{8}) C=([0-9a-f]{8}) M=([^\r\n]*)\r\n", RegexOptions.CultureInvariant);

    /// <summary>Sends bytes to the guest's console.</summary>
    public static Task SendAsync(WebSocket ws, string text)
    {
        using var cts = new CancellationTokenSource(ClusterRig.Hang);
        return ws.SendAsync(Encoding.ASCII.GetBytes(text), WebSocketMessageType.Binary, true, cts.Token);
    }

    /// <summary>
    /// Sends '?' and reads until the answer numbered <paramref name="query"/> has come (the console's replay of older
    /// output, older answers included, is skipped by that number).
    /// </summary>
    public static async Task<Answer> AskAsync(WebSocket ws, uint query)
    {
        await SendAsync(ws, "?");
        using var cts = new CancellationTokenSource(ClusterRig.Hang);
        var sb = new StringBuilder();
        var buf = new byte[8192];
        while (true)
        {
            foreach (Match m in AnswerLine.Matches(sb.ToString()))
            {
                uint q = Convert.ToUInt32(m.Groups[1].Value, 16);
                if (q == query) return new Answer(q, Convert.ToUInt32(m.Groups[2].Value, 16), m.Groups[3].Value);
                if (q > query) throw new InvalidOperationException($"the guest answered query {q}, expected {query}: {sb}");
            }
            WebSocketReceiveResult r;
            try { r = await ws.ReceiveAsync(buf, cts.Token); }
            catch (OperationCanceledException) { throw new TimeoutException($"console: no answer {query} within the hang guard; got: {sb}"); }
            if (r.MessageType == WebSocketMessageType.Close) throw new InvalidOperationException($"console closed before answer {query}; got: {sb}");
            sb.Append(Encoding.Latin1.GetString(buf, 0, r.Count));
        }
    }
}
