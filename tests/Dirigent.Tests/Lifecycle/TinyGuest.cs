using System.Text;
using Dirigent.Vmm;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Lifecycle;

/// <summary>
/// A deterministic Multiboot guest for lifecycle tests: it runs <c>ticks</c> rounds of a busy arithmetic loop, prints
/// one letter per round on COM1 ('A', 'B', ...), then "=" and exits through the debug-exit port with a checksum of
/// all its work. A run that is paused, saved, restored (or migrated) anywhere must print the same letters and exit
/// with the same value as one that ran straight through.
/// </summary>
internal static class TinyGuest
{
    private const uint LoadAddr = 0x10_0000;

    public static byte[] Build(int ticks = 12, int spin = 150_000)
    {
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        var round = a.CreateLabel();
        var inner = a.CreateLabel();
        a.mov(edi, 0x1234_5678u);
        a.mov(ebx, 0);
        a.mov(esp, 0x8_0000);
        a.Label(ref round);
        a.mov(ecx, (uint)spin);
        a.Label(ref inner);
        a.add(edi, ecx);
        a.rol(edi, 3);
        a.xor(edi, ebx);
        // Keep some state in memory too, so RAM is part of what must survive.
        a.mov(__dword_ptr[0x20_0000], edi);
        a.dec(ecx);
        a.jnz(inner);
        a.lea(eax, __[ebx + 'A']);
        EmitPutc(a);
        a.inc(ebx);
        a.cmp(ebx, ticks);
        a.jb(round);
        a.mov(al, (byte)'=');
        EmitPutc(a);
        a.mov(eax, __dword_ptr[0x20_0000]);
        a.xor(eax, edi);          // 0 if memory and register agree
        a.add(eax, edi);
        a.and(eax, 0x3F);
        a.@out(0xF4, al);
        a.cli();
        a.hlt();
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        return ms.ToArray();
    }

    /// <summary>Writes <paramref name="text"/> to COM1, each byte after polling LSR until THR is empty (any mode).</summary>
    public static void EmitWriteCom1(Assembler a, string text)
    {
        foreach (char ch in text)
        {
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.mov(dx, 0x3FD);
            a.@in(al, dx);
            a.test(al, 0x20);
            a.jz(wait);
            a.mov(dx, 0x3F8);
            a.mov(al, (byte)ch);
            a.@out(dx, al);
        }
    }

    /// <summary>Writes AL to COM1 after waiting for THR empty (any mode; AH and DX are used).</summary>
    internal static void EmitPutc(Assembler a)
    {
        var wait = a.CreateLabel();
        a.mov(ah, al);
        a.Label(ref wait);
        a.mov(dx, 0x3FD);
        a.@in(al, dx);
        a.test(al, 0x20);
        a.jz(wait);
        a.mov(dx, 0x3F8);
        a.mov(al, ah);
        a.@out(dx, al);
    }

    public static string WriteKernel(string dir, int ticks = 12, int spin = 150_000)
    {
        string path = Path.Combine(dir, "tiny-guest.bin");
        File.WriteAllBytes(path, Build(ticks, spin));
        return path;
    }

    public static VmSpec Spec(string kernel, AccelKind accel = AccelKind.Emu) =>
        new() { Kernel = kernel, MemoryBytes = 16UL << 20, Accel = accel, Serial = "none" };
}

/// <summary>Collects a VM's console output and lets a test wait for text in it.</summary>
internal sealed class ConsoleCapture : IDisposable
{
    private readonly StringBuilder _sb = new();
    private readonly IDisposable _sub;
    private readonly object _lock = new();

    public ConsoleCapture(Vm vm, bool replay = false)
    {
        _sub = vm.Console.Subscribe(b =>
        {
            lock (_lock) { _sb.Append((char)b); Monitor.PulseAll(_lock); }
        }, replay);
    }

    public string Text { get { lock (_lock) return _sb.ToString(); } }

    /// <summary>Waits until the output contains <paramref name="s"/> (bounded by <paramref name="timeout"/>).</summary>
    public bool WaitFor(string s, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        lock (_lock)
        {
            while (!_sb.ToString().Contains(s, StringComparison.Ordinal))
            {
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) return false;
                Monitor.Wait(_lock, left);
            }
            return true;
        }
    }

    public void Dispose() => _sub.Dispose();
}


internal static class VmTestExtensions
{
    /// <summary>Starts (or resumes) a tiny-guest VM and runs it to its debug-exit: its console output and exit value.</summary>
    public static (string Out, int Exit) RunToDebugExit(this Vm vm, TimeSpan timeout)
    {
        using var cap = new ConsoleCapture(vm);
        vm.Start();
        Assert.True(vm.WaitEnded(timeout));
        Assert.Equal(VmExitKind.DebugExit, vm.ExitReason!.Kind);
        return (cap.Text, vm.ExitReason.DebugExitValue);
    }

    /// <summary>Waits (bounded) for the VM to end.</summary>
    public static bool WaitEnded(this Vm vm, TimeSpan timeout) => vm.Completion.Wait(timeout);

    public static bool WaitDone(this Task t, TimeSpan timeout) => t.Wait(timeout);
}
