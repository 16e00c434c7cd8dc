using Dirigent.Tests.Infrastructure;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// BCD adjustments (legacy modes only, so no host oracle) checked against the SDM pseudo-code written out here,
/// plus BOUND, AAM 0, SALC and the 64-bit #UD of the BCD opcodes.
/// </summary>
public class IntFlowMiscTests
{
    private const uint CF = 1, PF = 4, AF = 0x10, ZF = 0x40, SF = 0x80, OF = 0x800;
    private const ulong In = 0x20_0000, Out = 0x30_0000;

    private static uint Szp(byte v) => (v == 0 ? ZF : 0) | ((v & 0x80) != 0 ? SF : 0) | (System.Numerics.BitOperations.PopCount(v) % 2 == 0 ? PF : 0);

    // ---- SDM pseudo-code, transcribed ----
    private static (uint ax, uint fl) SdmDaa(uint ax, uint fl)
    {
        byte al = (byte)ax, oldAl = al;
        bool oldCf = (fl & CF) != 0, cf = false, af;
        if ((al & 0xF) > 9 || (fl & AF) != 0)
        {
            int sum = al + 6;
            al = (byte)sum;
            cf = oldCf || sum > 0xFF;
            af = true;
        }
        else af = false;
        if (oldAl > 0x99 || oldCf) { al = (byte)(al + 0x60); cf = true; }
        else cf = false;
        return ((ax & 0xFF00) | al, Szp(al) | (cf ? CF : 0) | (af ? AF : 0));
    }

    private static (uint ax, uint fl) SdmDas(uint ax, uint fl)
    {
        byte al = (byte)ax, oldAl = al;
        bool oldCf = (fl & CF) != 0, cf = false, af;
        if ((al & 0xF) > 9 || (fl & AF) != 0)
        {
            int diff = al - 6;
            al = (byte)diff;
            cf = oldCf || diff < 0;
            af = true;
        }
        else af = false;
        if (oldAl > 0x99 || oldCf) { al = (byte)(al - 0x60); cf = true; }
        return ((ax & 0xFF00) | al, Szp(al) | (cf ? CF : 0) | (af ? AF : 0));
    }

    private static (uint ax, uint fl) SdmAaa(uint ax, uint fl)
    {
        bool adj = (ax & 0xF) > 9 || (fl & AF) != 0;
        if (adj) ax = (ax + 0x106) & 0xFFFF;
        ax &= 0xFF0F;
        return (ax, adj ? AF | CF : 0);
    }

    private static (uint ax, uint fl) SdmAas(uint ax, uint fl)
    {
        bool adj = (ax & 0xF) > 9 || (fl & AF) != 0;
        if (adj)
        {
            ax = (ax - 6) & 0xFFFF;
            ax = (ax & 0xFF) | ((((ax >> 8) - 1) & 0xFF) << 8);
        }
        ax &= 0xFF0F;
        return (ax, adj ? AF | CF : 0);
    }

    private static (uint ax, uint fl) SdmAam(uint ax, byte imm)
    {
        byte al = (byte)ax;
        byte ah = (byte)(al / imm), nal = (byte)(al % imm);
        return ((uint)(ah << 8 | nal), Szp(nal));
    }

    private static (uint ax, uint fl) SdmAad(uint ax, byte imm)
    {
        byte al = (byte)ax, ah = (byte)(ax >> 8);
        byte nal = (byte)((al + ah * imm) & 0xFF);
        return (nal, Szp(nal));
    }

    /// <summary>Runs op over every AL with CF/AF combinations in 32-bit mode; returns (input, output) pairs.</summary>
    private static List<(uint eax, uint fl, uint oeax, uint ofl)> RunTable(Action<Assembler> op, int seed)
    {
        using var vm = new TestVm();
        var rng = new Random(seed);
        var inputs = new List<(uint, uint)>();
        for (int k = 0; k < 1024; k++)
        {
            uint eax = (uint)rng.Next() & 0xFFFF_FF00 | (uint)(k & 0xFF);
            uint fl = 2 | ((k & 0x100) != 0 ? CF : 0) | ((k & 0x200) != 0 ? AF : 0) | ((uint)rng.Next() & (SF | ZF | PF | OF));
            inputs.Add((eax, fl));
            vm.Vm.Memory.WriteU32(In + (ulong)k * 8, eax);
            vm.Vm.Memory.WriteU32(In + (ulong)k * 8 + 4, fl);
        }
        vm.Start32(a =>
        {
            var l = a.CreateLabel();
            a.mov(esi, (uint)In);
            a.mov(edi, (uint)Out);
            a.mov(ecx, inputs.Count);
            a.Label(ref l);
            a.push(__dword_ptr[esi + 4]);
            a.popfd();
            a.mov(eax, __dword_ptr[esi]);
            op(a);
            a.pushfd();
            a.pop(edx);
            a.mov(__dword_ptr[edi], eax);
            a.mov(__dword_ptr[edi + 4], edx);
            a.add(esi, 8);
            a.add(edi, 8);
            a.dec(ecx);
            a.jnz(l);
            a.hlt();
        });
        vm.RunToHlt();
        var res = new List<(uint, uint, uint, uint)>();
        for (int k = 0; k < inputs.Count; k++)
            res.Add((inputs[k].Item1, inputs[k].Item2, vm.Vm.Memory.ReadU32(Out + (ulong)k * 8), vm.Vm.Memory.ReadU32(Out + (ulong)k * 8 + 4)));
        return res;
    }

    public static IEnumerable<object[]> BcdOps()
    {
        yield return ["daa", 0];
        yield return ["das", 0];
        yield return ["aaa", 0];
        yield return ["aas", 0];
        yield return ["aam", 10];
        yield return ["aam", 16];
        yield return ["aam", 7];
        yield return ["aam", 255];
        yield return ["aad", 10];
        yield return ["aad", 16];
        yield return ["aad", 3];
        yield return ["aad", 0];
    }

    [Theory]
    [MemberData(nameof(BcdOps))]
    public void BcdMatchesSdm(string name, int imm)
    {
        Action<Assembler> op = name switch
        {
            "daa" => a => a.daa(),
            "das" => a => a.das(),
            "aaa" => a => a.aaa(),
            "aas" => a => a.aas(),
            "aam" => a => a.db(0xD4, (byte)imm),
            _ => a => a.db(0xD5, (byte)imm),
        };
        uint definedFlags = name switch { "daa" or "das" => CF | AF | SF | ZF | PF, "aaa" or "aas" => CF | AF, _ => SF | ZF | PF };
        int failures = 0;
        string first = "";
        int seed = Dirigent.Tests.Native.Differential.StableHash(name) ^ imm; // stable across processes: a failure replays
        foreach (var (eax, fl, oeax, ofl) in RunTable(op, seed))
        {
            var (ax, efl) = name switch
            {
                "daa" => SdmDaa(eax & 0xFFFF, fl),
                "das" => SdmDas(eax & 0xFFFF, fl),
                "aaa" => SdmAaa(eax & 0xFFFF, fl),
                "aas" => SdmAas(eax & 0xFFFF, fl),
                "aam" => SdmAam(eax & 0xFFFF, (byte)imm),
                _ => SdmAad(eax & 0xFFFF, (byte)imm),
            };
            uint expectEax = (eax & 0xFFFF_0000) | ax;
            if (oeax != expectEax || (ofl & definedFlags) != (efl & definedFlags))
            {
                if (failures++ == 0) first = $"eax={eax:x} fl={fl:x}: got eax={oeax:x} fl={ofl & definedFlags:x}, SDM eax={expectEax:x} fl={efl & definedFlags:x}";
            }
        }
        Assert.True(failures == 0, $"{name} {imm} (seed {seed}): {failures} mismatches, first: {first}");
    }

    private static uint RunForVector32(Action<Assembler> build)
    {
        using var vm = new TestVm();
        vm.Start32(build);
        IntFlowSupport.InstallIdt(vm, longMode: false);
        vm.RunToHlt();
        return IntFlowSupport.Vector(vm);
    }

    [Fact]
    public void AamZeroRaisesDivideError()
    {
        Assert.Equal(0u, RunForVector32(a => { a.mov(eax, 0x1234); a.db(0xD4, 0); a.hlt(); }));
    }

    [Fact]
    public void SalcIsUndefined()
    {
        Assert.Equal(6u, RunForVector32(a => { a.db(0xD6); a.hlt(); }));
    }

    [Fact]
    public void BoundChecksSignedRange()
    {
        const uint b = 0x20_0000;
        // Inside the bounds [-5, 100] (signed): no exception.
        Assert.Equal(IntFlowSupport.NoVector, RunForVector32(a =>
        {
            a.mov(__dword_ptr[b], -5); a.mov(__dword_ptr[b + 4], 100);
            a.mov(eax, -5); a.bound(eax, __qword_ptr[b]);
            a.mov(eax, 100); a.bound(eax, __qword_ptr[b]);
            a.mov(__word_ptr[b + 8], 0xFFF0); a.mov(__word_ptr[b + 10], 0x10);
            a.mov(ax, 0xFFF0); a.bound(ax, __dword_ptr[b + 8]);
            a.hlt();
        }));
        Assert.Equal(5u, RunForVector32(a =>
        {
            a.mov(__dword_ptr[b], -5); a.mov(__dword_ptr[b + 4], 100);
            a.mov(eax, 101); a.bound(eax, __qword_ptr[b]);
            a.hlt();
        }));
        Assert.Equal(5u, RunForVector32(a =>
        {
            a.mov(__word_ptr[b + 8], 0xFFF0); a.mov(__word_ptr[b + 10], 0x10);
            a.mov(ax, 0xFFEF); a.bound(ax, __dword_ptr[b + 8]);
            a.hlt();
        }));
    }

    [Theory]
    [InlineData(0x27)] // DAA
    [InlineData(0x2F)] // DAS
    [InlineData(0x37)] // AAA
    [InlineData(0x3F)] // AAS
    public void BcdOpcodesAreUndefinedIn64BitMode(byte opcode)
    {
        using var vm = new TestVm();
        vm.Start64(a => { a.db(opcode); a.hlt(); });
        IntFlowSupport.InstallIdt(vm, longMode: true);
        vm.RunToHlt();
        Assert.Equal(6u, IntFlowSupport.Vector(vm));
    }

    [Fact]
    public void FlagInstructions32()
    {
        using var vm = new TestVm();
        vm.Start32(a =>
        {
            a.stc(); a.pushfd(); a.pop(eax);
            a.cmc(); a.pushfd(); a.pop(ebx);
            a.std(); a.pushfd(); a.pop(ecx);
            a.cld(); a.clc(); a.cmc(); a.pushfd(); a.pop(edx);
            a.hlt();
        });
        vm.RunToHlt();
        var g = vm.Cpu.Gpr;
        Assert.Equal(1UL, g[0] & 0x401);
        Assert.Equal(0UL, g[3] & 0x401);
        Assert.Equal(0x400UL, g[1] & 0x401);
        Assert.Equal(1UL, g[2] & 0x401);
    }
}
