using Dirigent.Cli;
using Dirigent.Machine.Introspection.RecordReplay;
using Dirigent.Tests.Boot;
using Dirigent.Vmm;
using Dirigent.Vmm.Introspection;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// `dirigent run --record` / `--replay` on a bare-metal guest assembled here, whose work depends on where PIT
/// interrupts land in its busy loop, on RDTSC values and on HLT waits for timer ticks. Its replays (no devices live:
/// interrupts, device reads and idle-time skips come from the log) must print the same, end with the same memory and
/// instruction count, and a log tampered with must stop the replay with the instruction count of the divergence.
/// </summary>
public class RecordReplayTests
{
    private const uint LoadAddr = 0x10_0000;
    private const uint Counter = 0x30_0000, Work = 0x30_0040;

    /// <summary>
    /// A Multiboot kernel: IDT (every gate IRETs, vector 0x20 counts ticks), PIC remapped with only IRQ0 open, PIT at
    /// ~1 kHz; then <paramref name="rounds"/> rounds of a loop that mixes the tick counter and the TSC into its state
    /// and prints a letter chosen by the tick count; then HLT until 20 more ticks; then the state's low bits through
    /// the debug-exit port.
    /// </summary>
    internal static byte[] BuildGuest(int rounds = 10, int spin = 60_000)
    {
        // Two passes: the first finds the handlers' addresses, the second uses them (mov imm32 keeps the layout).
        uint generic = 0, timer = 0;
        for (int pass = 0; pass < 2; pass++)
        {
            var a = new Assembler(32);
            const uint magic = 0x1BADB002, flags = 0x0001_0000;
            Label genericL = a.CreateLabel(), timerL = a.CreateLabel(), entry = a.CreateLabel(), fill = a.CreateLabel(),
                round = a.CreateLabel(), inner = a.CreateLabel(), wait = a.CreateLabel();
            a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
            a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
            a.jmp(entry);
            a.Label(ref genericL);
            a.iretd();
            a.Label(ref timerL);
            a.push(eax);
            a.inc(__dword_ptr[Counter]);
            a.mov(al, 0x20);
            a.@out(0x20, al); // EOI
            a.pop(eax);
            a.iretd();

            a.Label(ref entry);
            a.mov(esp, 0x8_0000);
            const uint idt = 0x7_0000, idtr = 0x6_F800;
            // Interrupt gates in the loader's code segment: all to the IRET stub, 0x20 to the tick counter.
            a.xor(edx, edx);
            a.mov(dx, cs);
            a.shl(edx, 16);
            a.mov(eax, generic & 0xFFFF);
            a.or(eax, edx);
            a.mov(esi, (generic & 0xFFFF_0000) | 0x8E00);
            a.mov(edi, idt);
            a.mov(ecx, 256);
            a.Label(ref fill);
            a.mov(__dword_ptr[edi], eax);
            a.mov(__dword_ptr[edi + 4], esi);
            a.add(edi, 8);
            a.dec(ecx);
            a.jnz(fill);
            a.mov(eax, timer & 0xFFFF);
            a.or(eax, edx);
            a.mov(__dword_ptr[idt + 0x20 * 8], eax);
            a.mov(__dword_ptr[idt + 0x20 * 8 + 4], (timer & 0xFFFF_0000) | 0x8E00);
            a.mov(__word_ptr[idtr], 256 * 8 - 1);
            a.mov(__dword_ptr[idtr + 2], idt);
            a.lidt(__[idtr]);
            // 8259s: master at 0x20, slave at 0x28, only IRQ0 unmasked.
            foreach (var (port, v) in new (int, byte)[] { (0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28), (0x21, 4), (0xA1, 2), (0x21, 1), (0xA1, 1), (0x21, 0xFE), (0xA1, 0xFF) })
            {
                a.mov(al, v);
                a.@out((byte)port, al);
            }
            // PIT channel 0, mode 2, divisor 1193: ~1 kHz.
            a.mov(al, 0x34); a.@out(0x43, al);
            a.mov(al, 1193 & 0xFF); a.@out(0x40, al);
            a.mov(al, 1193 >> 8); a.@out(0x40, al);
            a.mov(__dword_ptr[Counter], 0);
            a.mov(edi, 0x1234_5678u);
            a.xor(ebx, ebx);
            a.sti();
            a.Label(ref round);
            a.mov(ecx, (uint)spin);
            a.Label(ref inner);
            a.add(edi, ecx);
            a.rol(edi, 3);
            a.xor(edi, __dword_ptr[Counter]); // where the ticks landed changes the state
            a.mov(__dword_ptr[Work], edi);
            a.dec(ecx);
            a.jnz(inner);
            a.rdtsc();
            a.xor(edi, eax);
            a.mov(eax, __dword_ptr[Counter]);
            a.and(eax, 15);
            a.add(eax, 'A');
            Dirigent.Tests.Lifecycle.TinyGuest.EmitPutc(a);
            a.inc(ebx);
            a.cmp(ebx, rounds);
            a.jb(round);
            // Idle until 20 more ticks: replay must skip these HLTs instead of waiting.
            a.mov(ebx, __dword_ptr[Counter]);
            a.add(ebx, 20);
            a.Label(ref wait);
            a.hlt();
            a.cmp(__dword_ptr[Counter], ebx);
            a.jb(wait);
            a.mov(al, (byte)'\n');
            Dirigent.Tests.Lifecycle.TinyGuest.EmitPutc(a);
            a.mov(eax, edi);
            a.and(eax, 0x3F);
            a.@out(0xF4, al);
            a.cli();
            a.hlt();
            using var ms = new MemoryStream();
            var res = a.Assemble(new StreamCodeWriter(ms), LoadAddr, BlockEncoderOptions.ReturnNewInstructionOffsets);
            generic = (uint)res.GetLabelRIP(genericL);
            timer = (uint)res.GetLabelRIP(timerL);
            if (pass == 1) return ms.ToArray();
        }
        throw new InvalidOperationException();
    }

    private sealed class Guest : IDisposable
    {
        public readonly string Dir = Path.Combine(Path.GetTempPath(), $"dirigent-rr-{Environment.ProcessId}-{Guid.NewGuid():N}");
        public readonly string Kernel;
        public string Recording => Path.Combine(Dir, "rec");

        public Guest()
        {
            Directory.CreateDirectory(Dir);
            Kernel = Path.Combine(Dir, "kernel.bin");
            File.WriteAllBytes(Kernel, BuildGuest());
        }

        public VmSpec Spec => new() { Kernel = Kernel, MemoryBytes = 16UL << 20, Accel = AccelKind.Emu };

        public void Dispose() { try { Directory.Delete(Dir, recursive: true); } catch (IOException) { } }
    }

    private static readonly TimeSpan Guard = TimeSpan.FromMinutes(2);

    private static (int rc, GuestRunner r) Run(VmSpec spec, RunOptions opts)
    {
        var r = new GuestRunner();
        return (r.Run(spec, Guard, opts), r);
    }

    private static List<ReplayEvent> ReadLog(string dir)
    {
        using var reader = new EventLogReader(File.OpenRead(Path.Combine(dir, RecordingManifest.LogFileName)));
        var list = new List<ReplayEvent>();
        while (reader.TryRead(out var e)) list.Add(e);
        return list;
    }

    private static RecordingManifest Manifest(string dir) =>
        System.Text.Json.JsonSerializer.Deserialize<RecordingManifest>(File.ReadAllText(Path.Combine(dir, RecordingManifest.FileName)),
            new System.Text.Json.JsonSerializerOptions { PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.CamelCase })!;

    [Fact]
    public void RecordingOfTimerDrivenGuestReplaysIdenticallyThreeTimes()
    {
        using var g = new Guest();
        var (rc, rec) = Run(g.Spec, new RunOptions { RecordDir = g.Recording });
        Assert.True(rc % 2 == 1, $"recording: exit status {rc}; errors: {rec.Errors}");
        Assert.Contains("dirigent: recorded ", rec.Errors);
        var m = Manifest(g.Recording);
        Assert.Equal(("debug-exit", rc), (m.End, m.EndCode));
        var log = ReadLog(g.Recording);
        // The run depended on the host: timer interrupts, TSC reads, device reads are all in the log.
        int ticks = log.Count(e => e.Kind == EventKind.Interrupt && e.Address == 0x20);
        Assert.True(ticks >= 20, $"only {ticks} timer interrupts recorded");
        // The TSC is not logged: under instruction time the replay computes the same values from the count.
        Assert.DoesNotContain(log, e => e.Kind == EventKind.Tsc);
        Assert.Contains(log, e => e.Kind == EventKind.TimeSkip);
        Assert.Contains(log, e => e.Kind == EventKind.PortRead && e.Address == 0x3FD);
        Assert.Contains(log, e => e.Kind == EventKind.Checkpoint);
        var end = log[^1];
        Assert.Equal((EventKind.End, m.Instructions), (end.Kind, end.Icount));
        Assert.Equal(11, rec.Output.Length); // ten letters and the newline

        for (int k = 0; k < 3; k++)
        {
            var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
            Assert.True(rrc == rc, $"replay {k}: exit status {rrc}, recorded {rc}; errors: {rep.Errors}");
            Assert.Equal(rec.Output, rep.Output);
            Assert.Contains($"replay matches the recording: {m.Instructions} instructions", rep.Errors);
        }
    }

    [Fact]
    public void TamperedLogStopsTheReplayAtTheInstructionWhereItDiverges()
    {
        using var g = new Guest();
        var (rc, rec) = Run(g.Spec, new RunOptions { RecordDir = g.Recording });
        Assert.True(rc % 2 == 1, $"recording: exit status {rc}; errors: {rec.Errors}");
        var log = ReadLog(g.Recording);
        // The first LSR read said THR empty; make it say busy: the guest polls once more, a read the log lacks.
        int at = log.FindIndex(e => e.Kind == EventKind.PortRead && e.Address == 0x3FD);
        var ev = log[at];
        ev.Value = 0;
        log[at] = ev;
        using (var w = new EventLogWriter(File.Create(Path.Combine(g.Recording, RecordingManifest.LogFileName))))
            foreach (var e in log) w.Write(e);
        var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
        Assert.Equal(ExitCodes.VmmFailure, rrc);
        var match = System.Text.RegularExpressions.Regex.Match(rep.Errors, @"dirigent run --replay: replay diverged at instruction (\d+): ");
        Assert.True(match.Success, rep.Errors);
        ulong where = ulong.Parse(match.Groups[1].Value);
        Assert.InRange(where, ev.Icount + 1, Manifest(g.Recording).Instructions);
    }

    [Fact]
    public void ReadOfAnotherPortThanRecordedIsADivergence()
    {
        using var g = new Guest();
        var (rc, rec) = Run(g.Spec, new RunOptions { RecordDir = g.Recording });
        Assert.True(rc % 2 == 1, $"recording: exit status {rc}; errors: {rec.Errors}");
        var log = ReadLog(g.Recording);
        int at = log.FindIndex(e => e.Kind == EventKind.PortRead);
        var ev = log[at];
        ev.Address = 0x2FD;
        log[at] = ev;
        using (var w = new EventLogWriter(File.Create(Path.Combine(g.Recording, RecordingManifest.LogFileName))))
            foreach (var e in log) w.Write(e);
        var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
        Assert.Equal(ExitCodes.VmmFailure, rrc);
        Assert.Contains($"replay diverged at instruction {ev.Icount}: the guest made a 1-byte read of port 0x3fd; the recording has a 1-byte read of port 0x2fd", rep.Errors);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void GuestThatTripleFaultsOrHaltsForeverEndsItsReplayTheSameWay(bool tripleFault)
    {
        // Prints a line, then divides by zero with an empty IDT (#DE, #GP, #DF: triple fault) or halts with IF=0.
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        Dirigent.Tests.Lifecycle.TinyGuest.EmitWriteCom1(a, "about to end\r\n");
        a.cli();
        if (tripleFault)
        {
            a.push(0); a.push(0);
            a.lidt(__[esp + 2]);
            a.xor(ecx, ecx);
            a.div(ecx);
        }
        a.hlt();
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        using var g = new Guest();
        File.WriteAllBytes(g.Kernel, ms.ToArray());
        var (rc, rec) = Run(g.Spec, new RunOptions { RecordDir = g.Recording });
        Assert.Equal(ExitCodes.GuestDied, rc);
        Assert.Equal(tripleFault ? "triple-fault" : "halted-forever", Manifest(g.Recording).End);
        var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
        Assert.True(rrc == ExitCodes.GuestDied, $"replay: exit status {rrc}; errors: {rep.Errors}");
        Assert.Equal("about to end\r\n", rep.Output);
        Assert.Contains("replay matches the recording", rep.Errors);
    }

    [Fact]
    public void TruncatedLogIsReportedAsADivergenceNotAHang()
    {
        using var g = new Guest();
        var (rc, rec) = Run(g.Spec, new RunOptions { RecordDir = g.Recording });
        Assert.True(rc % 2 == 1, $"recording: exit status {rc}; errors: {rec.Errors}");
        string path = Path.Combine(g.Recording, RecordingManifest.LogFileName);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
        Assert.Equal(ExitCodes.VmmFailure, rrc);
        Assert.Matches(@"dirigent run --replay: replay diverged at instruction \d+: ", rep.Errors);
        Assert.DoesNotContain("   at ", rep.Errors); // no stack trace
    }

    [Fact]
    public void VersionOneRecordingStillReplaysAndAnUnknownVersionIsRefusedWithOneLine()
    {
        using var g = new Guest();
        var (rc, rec) = Run(g.Spec, new RunOptions { RecordDir = g.Recording });
        Assert.True(rc % 2 == 1, $"recording: exit status {rc}; errors: {rec.Errors}");
        // Version 1 had no DMA events and no virtio devices: such a recording is this one with the old magic and
        // the old manifest version (and no disks or rng in it).
        string log = Path.Combine(g.Recording, RecordingManifest.LogFileName), manifest = Path.Combine(g.Recording, RecordingManifest.FileName);
        var bytes = File.ReadAllBytes(log);
        "DRRLOG1\n"u8.CopyTo(bytes);
        File.WriteAllBytes(log, bytes);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(manifest))!.AsObject();
        json["version"] = 1;
        json.Remove("disks");
        json.Remove("rng");
        File.WriteAllText(manifest, json.ToJsonString());
        var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
        Assert.True(rrc == rc, $"replay of version 1: exit status {rrc}; errors: {rep.Errors}");
        Assert.Equal(rec.Output, rep.Output);
        Assert.Contains("replay matches the recording", rep.Errors);

        json["version"] = 3;
        File.WriteAllText(manifest, json.ToJsonString());
        var (rc3, r3) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
        Assert.Equal(ExitCodes.BadInput, rc3);
        Assert.Equal($"dirigent run: --replay {g.Recording}: format dirigent-recording version 3; this dirigent reads dirigent-recording versions 1 to 2", r3.Errors.Trim());
    }

    [Fact]
    public void RecordRefusesWhatItCannotLogWithOneLine()
    {
        using var g = new Guest();
        var spec = g.Spec;
        spec.Cpus = 2;
        var (rc, r) = Run(spec, new RunOptions { RecordDir = g.Recording });
        Assert.Equal(ExitCodes.BadInput, rc);
        Assert.Equal("dirigent run: --record needs one vCPU (--cpus 2): the interleaving of vCPUs is not recorded", r.Errors.Trim());
        var (rc2, r2) = Run(new VmSpec(), new RunOptions { ReplayDir = Path.Combine(g.Dir, "none") });
        Assert.Equal(ExitCodes.BadInput, rc2);
        Assert.Single(r2.Errors.Trim().Split('\n'));
        Assert.StartsWith("dirigent run: --replay ", r2.Errors);
    }
}
