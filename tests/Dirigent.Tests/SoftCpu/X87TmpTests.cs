using Dirigent.Tests.Native;
using static Iced.Intel.AssemblerRegisters;
namespace Dirigent.Tests.SoftCpu;
public class X87TmpTests
{
    [Fact]
    public void Emu()
    {
        var code = Differential.Asm(a => a.fadd(st0, st1));
        var rng = new Random(1);
        using var e = new EmuRunner();
        for (int k = 0; k < 50; k++) { var s = X87Gen.State(rng, true); e.Run(code, s); }
    }
    [Fact]
    public void Host()
    {
        var code = Differential.Asm(a => a.fadd(st0, st1));
        var rng = new Random(1);
        using var e = new NativeRunner();
        for (int k = 0; k < 50; k++) { var s = X87Gen.State(rng, true); e.Run(code, s); }
    }
}
