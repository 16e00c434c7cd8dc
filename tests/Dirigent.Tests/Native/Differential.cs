using System.Runtime.CompilerServices;
using System.Text;
using Decoder = Iced.Intel.Decoder;
using Iced.Intel;

namespace Dirigent.Tests.Native;

/// <summary>
/// Differential testing of the software CPU against the host CPU: the same instruction from the same random states,
/// comparing GPRs, the flags the SDM defines for it, the FXSAVE image and the memory buffer.
/// Case count per form: DIRIGENT_DIFF_CASES (default 64; set it high for a deep run).
/// </summary>
public sealed class Differential : IDisposable
{
    private readonly NativeRunner _native = new();
    // The same cases run on the interpreter, on the compiled tier (every block compiled before it runs) and on the
    // native first tier (every block's native code made before it runs; the interpreter does what it does not cover).
    private readonly EmuRunner _emu = new(Dirigent.Accel.Emu.Jit.JitMode.Off);
    private readonly EmuRunner _emuJit = new(Dirigent.Accel.Emu.Jit.JitMode.Always);
    private readonly EmuRunner _emuNative = new(Dirigent.Accel.Emu.Jit.JitMode.Off, native: 1);
    public static int CasesPerForm => int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_DIFF_CASES"), out var n) && n > 0 ? n : 64;
    public int CasesRun { get; private set; }

    /// <summary>Assembles a single 64-bit instruction.</summary>
    public static byte[] Asm(Action<Assembler> build)
    {
        var a = new Assembler(64);
        build(a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), EmuRunner.CodeAddr);
        return ms.ToArray();
    }

    /// <summary>RFLAGS bits the SDM leaves undefined for this instruction (Iced's instruction info), to mask out.</summary>
    public static ulong UndefinedFlags(byte[] code)
    {
        var d = Decoder.Create(64, code);
        d.IP = EmuRunner.CodeAddr;
        d.Decode(out var ins);
        var u = ins.RflagsUndefined;
        ulong m = 0;
        if ((u & RflagsBits.OF) != 0) m |= 1UL << 11;
        if ((u & RflagsBits.SF) != 0) m |= 1UL << 7;
        if ((u & RflagsBits.ZF) != 0) m |= 1UL << 6;
        if ((u & RflagsBits.AF) != 0) m |= 1UL << 4;
        if ((u & RflagsBits.CF) != 0) m |= 1UL << 0;
        if ((u & RflagsBits.PF) != 0) m |= 1UL << 2;
        return m;
    }

    /// <summary>
    /// Runs the instruction from <paramref name="input"/> on both CPUs and returns a description of every
    /// difference (empty when they agree). flagMask: extra flag bits to ignore; compareFx: compare x87/SSE state.
    /// RBX is set to each side's own buffer address when <paramref name="memBase"/> is true.
    /// <paramref name="stringRegs"/> (string instructions): RSI and RDI point at these byte offsets inside each
    /// side's buffer, and only their offsets from the buffer are compared afterwards.
    /// </summary>
    public string Compare(byte[] code, MachineState input, ulong flagMask = 0, bool compareFx = true, bool memBase = false,
        (int Si, int Di)? stringRegs = null)
    {
        CasesRun++;
        var hin = input.Clone();
        var ein = input.Clone();
        if (memBase)
        {
            hin.Gpr[NativeRunner.MemBaseReg] = _native.HostMemAddress;
            ein.Gpr[NativeRunner.MemBaseReg] = EmuRunner.GuestMemAddress;
        }
        if (stringRegs is { } sr)
        {
            hin.Gpr[6] = _native.HostMemAddress + (ulong)sr.Si;
            hin.Gpr[7] = _native.HostMemAddress + (ulong)sr.Di;
            ein.Gpr[6] = EmuRunner.GuestMemAddress + (ulong)sr.Si;
            ein.Gpr[7] = EmuRunner.GuestMemAddress + (ulong)sr.Di;
        }
        var h = _native.Run(code, hin);
        var e = _emu.Run(code, ein.Clone());
        var j = _emuJit.Run(code, ein.Clone());
        var n = _emuNative.Run(code, ein);
        string d = Diff(code, input, h, e, flagMask, compareFx, memBase, stringRegs);
        if (d != "") return d;
        d = Diff(code, input, h, j, flagMask, compareFx, memBase, stringRegs);
        if (d != "") return "[compiled tier] " + d;
        d = Diff(code, input, h, n, flagMask, compareFx, memBase, stringRegs);
        return d == "" ? "" : "[native tier] " + d;
    }

    private string Diff(byte[] code, MachineState input, MachineState h, MachineState e, ulong flagMask, bool compareFx, bool memBase,
        (int Si, int Di)? stringRegs)
    {
        var sb = new StringBuilder();
        for (int k = 0; k < 16; k++)
        {
            if (k == 4 || (memBase && k == NativeRunner.MemBaseReg)) continue;
            if (stringRegs != null && k is 6 or 7)
            {
                long hd = (long)(h.Gpr[k] - _native.HostMemAddress), ed = (long)(e.Gpr[k] - EmuRunner.GuestMemAddress);
                if (hd != ed) sb.Append($" r{k} offset: host={hd} emu={ed};");
                continue;
            }
            if (h.Gpr[k] != e.Gpr[k]) sb.Append($" r{k}: host={h.Gpr[k]:x} emu={e.Gpr[k]:x};");
        }
        ulong mask = 0xCD5 & ~(UndefinedFlags(code) | flagMask);
        if ((h.Rflags & mask) != (e.Rflags & mask)) sb.Append($" rflags: host={h.Rflags & mask:x} emu={e.Rflags & mask:x};");
        if (compareFx)
        {
            for (int off = 0; off < 416; off++)
            {
                if (off is >= 6 and < 24) continue; // FOP/FIP/FDP: last-instruction pointers, not modelled
                if (off is >= 28 and < 32) continue; // MXCSR_MASK
                if (h.Fx[off] != e.Fx[off]) { sb.Append($" fx[{off}]: host={Hex(h.Fx, off)} emu={Hex(e.Fx, off)};"); break; }
            }
        }
        for (int k = 0; k < MachineState.MemSize; k++)
            if (h.Mem[k] != e.Mem[k]) { sb.Append($" mem[{k}]: host={h.Mem[k]:x2} emu={e.Mem[k]:x2};"); break; }
        if (sb.Length == 0) return "";
        return $"{Describe(code)}: in {DescribeInput(input)} ->{sb}";
    }

    /// <summary>The instruction(s) as text and as bytes, so a failure can be reassembled or pasted into a disassembler.</summary>
    public static string Describe(byte[] code)
    {
        var dec = Decoder.Create(64, code);
        dec.IP = EmuRunner.CodeAddr;
        dec.Decode(out var ins);
        return $"{ins} [bytes {Convert.ToHexString(code)}]";
    }

    /// <summary>Every input GPR and RFLAGS (the memory buffer and x87/SSE state follow from the seed).</summary>
    public static string DescribeInput(MachineState input)
    {
        var sb = new StringBuilder();
        for (int k = 0; k < 16; k++) sb.Append($"r{k}={input.Gpr[k]:x} ");
        return sb.Append($"fl={input.Rflags:x}").ToString();
    }

    /// <summary>
    /// The failure message of a differential test: how many cases failed, the seed its random states came from,
    /// how to run it again (the seed is fixed per form, so the same filter replays the same cases) and the first
    /// few mismatches, each with the instruction bytes and its input.
    /// </summary>
    public static string Report(string test, string form, int seed, int ran, List<string> failures) =>
        $"{form}: {failures.Count}/{ran} cases differ from the host (seed {seed}, DIRIGENT_DIFF_CASES={CasesPerForm}; replay: " +
        $"dotnet test tests/Dirigent.Tests -c Release --filter \"FullyQualifiedName~{test}\")\n" +
        string.Join("\n", failures.Take(3));

    /// <summary>Asserts that no case failed, with <see cref="Report"/> as the message.</summary>
    public static void AssertNoFailures(string test, string form, int seed, int ran, List<string> failures) =>
        Assert.True(failures.Count == 0, Report(test, form, seed, ran, failures));

    private static string Hex(byte[] b, int off) => Convert.ToHexString(b, off & ~15, 16);

    /// <summary>
    /// Runs <paramref name="form"/> from <see cref="CasesPerForm"/> random states (seeded by the form's name and
    /// <paramref name="salt"/>; <paramref name="adjust"/> may bias each state) on the host and on the software CPU,
    /// and fails with the first mismatch.
    /// </summary>
    public static void AssertMatchesHost(string name, Action<Assembler> form, int salt, bool memBase = false,
        Action<Random, MachineState>? adjust = null, [CallerFilePath] string callerFile = "")
    {
        Assert.True(NativeRunner.Supported, "differential tests need an x86-64 Linux host");
        using var d = new Differential();
        var code = Asm(form);
        int seed = StableHash(name) ^ salt;
        var rng = new Random(seed);
        var failures = new List<string>();
        for (int k = 0; k < CasesPerForm; k++)
        {
            var s = RandomState(rng);
            adjust?.Invoke(rng, s);
            string diff = d.Compare(code, s, memBase: memBase);
            if (diff != "") failures.Add(diff);
        }
        AssertNoFailures(Path.GetFileNameWithoutExtension(callerFile), name, seed, CasesPerForm, failures);
    }

    /// <summary>FNV-1a of the name: the same seed in every process (string.GetHashCode is randomized per process).</summary>
    public static int StableHash(string s)
    {
        uint h = 2166136261;
        foreach (char ch in s) { h ^= ch; h *= 16777619; }
        return (int)h;
    }

    /// <summary>Random state biased towards edge values (0, 1, all-ones, sign boundaries, small numbers).</summary>
    public static MachineState RandomState(Random rng)
    {
        var s = new MachineState();
        for (int k = 0; k < 16; k++) s.Gpr[k] = RandomValue(rng);
        s.Rflags = (ulong)rng.Next() & 0x8D5;
        for (int k = 0; k < 16; k++) for (int b = 0; b < 16; b += 8) BitConverter.TryWriteBytes(s.Xmm(k)[b..], RandomValue(rng));
        rng.NextBytes(s.Mem);
        return s;
    }

    public static ulong RandomValue(Random rng)
    {
        switch (rng.Next(10))
        {
            case 0: return 0;
            case 1: return (ulong)rng.Next(0, 70);
            case 2: return ulong.MaxValue - (ulong)rng.Next(0, 3);
            case 3: return 1UL << rng.Next(64);
            case 4: return (1UL << rng.Next(64)) - 1;
            case 5: return (ulong)(long)rng.Next(-200, 200);
            case 6: return 0x8000_0000UL + (ulong)rng.Next(-2, 2);
            default: return (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40);
        }
    }

    public void Dispose()
    {
        _native.Dispose();
        _emu.Dispose();
        _emuJit.Dispose();
        _emuNative.Dispose();
    }
}
