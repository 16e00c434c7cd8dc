using Dirigent.Cli;
using Dirigent.Vmm;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Boot;

/// <summary>`dirigent run --kernel` with a Multiboot kernel assembled here: COM1 output and the debug-exit status.</summary>
public class MultibootRunTests
{
    private const uint LoadAddr = 0x10_0000;

    /// <summary>A Multiboot v1 a.out-kludge image: print the message on COM1 (polling LSR.THRE), exit via port 0xF4.</summary>
    internal static byte[] BuildKernel(string message, byte exitValue)
    {
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        // Entry: EAX must hold the Multiboot magic; echo it so the test sees the loader set it.
        var bad = a.CreateLabel();
        a.cmp(eax, 0x2BADB002);
        a.jne(bad);
        Dirigent.Tests.Lifecycle.TinyGuest.EmitWriteCom1(a, message);
        a.mov(al, exitValue);
        a.@out(0xF4, al);
        a.Label(ref bad);
        a.cli();
        a.hlt();
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        return ms.ToArray();
    }

    [Fact]
    public void MultibootKernelPrintsOnCom1AndExitsThroughDebugExit()
    {
        string path = Path.Combine(Path.GetTempPath(), $"dirigent-mb-{Environment.ProcessId}.bin");
        File.WriteAllBytes(path, BuildKernel("hello from multiboot\r\n", 0x21));
        try
        {
            var r = new GuestRunner();
            int rc = r.Run(new VmSpec { Kernel = path, MemoryBytes = 32UL << 20 }, TimeSpan.FromSeconds(60));
            Assert.Equal((0x21 << 1) | 1, rc);
            Assert.Contains("hello from multiboot", r.Output);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void CorruptKernelIsRejectedWithOneLineAndNoVm()
    {
        string path = Path.Combine(Path.GetTempPath(), $"dirigent-bad-{Environment.ProcessId}.bin");
        File.WriteAllBytes(path, new byte[4096]);
        try
        {
            var err = new StringWriter();
            int rc = VmLauncher.Run(new VmSpec { Kernel = path }, err, new MemoryStream(), new MemoryStream(), useTerminal: false);
            Assert.Equal(ExitCodes.BadInput, rc);
            string msg = err.ToString().Trim();
            Assert.DoesNotContain('\n', msg);
            Assert.Contains("unknown kernel image format", msg);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void TripleFaultEndsTheRunWithTheDocumentedStatus()
    {
        // A Multiboot kernel that loads an empty IDT and divides by zero: #DE -> #GP -> #DF -> triple fault.
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        a.push(0); a.push(0);
        a.lidt(__[esp + 2]);
        a.xor(ecx, ecx);
        a.div(ecx);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        string path = Path.Combine(Path.GetTempPath(), $"dirigent-tf-{Environment.ProcessId}.bin");
        File.WriteAllBytes(path, ms.ToArray());
        try
        {
            var r = new GuestRunner();
            int rc = r.Run(new VmSpec { Kernel = path, MemoryBytes = 32UL << 20 }, TimeSpan.FromSeconds(60));
            Assert.Equal(ExitCodes.GuestDied, rc);
            Assert.Contains("triple fault", r.Errors);
        }
        finally { File.Delete(path); }
    }
}
