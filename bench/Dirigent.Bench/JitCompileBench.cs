using System.Diagnostics;
using System.Globalization;
using Dirigent.Accel.Emu.Core;
using Dirigent.Accel.Emu.Jit;
using Iced.Intel;

namespace Dirigent.Bench;

/// <summary>
/// The compiled tier's compiler alone: the blocks a guest made hot (recorded with DIRIGENT_JIT_DUMP=FILE during any run,
/// e.g. `bench boot`) decoded again and compiled one after another on this thread, IL emission and the .NET JIT
/// separately, so a change to the IL the compiler emits can be judged without the noise of a running guest.
/// Usage: bench jit-compile FILE [--passes N] [--per-block OUT] [--bundle K] (OUT: one line per method of the last
/// pass: IL bytes, instructions, .NET JIT microseconds; to fit the compiler's cost per IL byte and per method; K: the
/// blocks compiled K at a time into one method, as the compiler bundles its queue's hottest, DIRIGENT_JIT_BUNDLE)
/// </summary>
public static unsafe partial class JitCompileBench
{
    // Thread CPU time (getrusage RUSAGE_THREAD): what the compiler costs, without the noise of other load on the host.
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct RUsage { public long UtimeSec, UtimeUsec, StimeSec, StimeUsec; public fixed long Rest[14]; }
    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "getrusage")]
    private static partial int GetRUsage(int who, out RUsage usage);
    private static double ThreadCpuMs()
    {
        GetRUsage(1, out var u); // RUSAGE_THREAD
        return (u.UtimeSec + u.StimeSec) * 1000.0 + (u.UtimeUsec + u.StimeUsec) / 1000.0;
    }

    public static int Run(string file, int passes, string? perBlock = null, int bundle = 1)
    {
        var blocks = new List<Block>();
        foreach (var line in File.ReadLines(file))
        {
            var parts = line.Split(' ');
            if (parts.Length != 2) continue;
            ulong ip = ulong.Parse(parts[0], NumberStyles.HexNumber);
            byte[] bytes = Convert.FromHexString(parts[1]);
            var dec = Decoder.Create(64, new ByteArrayCodeReader(bytes), ip);
            var ins = new List<Instruction>();
            while (dec.IP < ip + (ulong)bytes.Length) { dec.Decode(out var i); ins.Add(i); }
            var b = new Block { Ip = ip, Linear = ip, Bits = 64, Count = ins.Count, RunCount = ins.Count, Instrs = ins.ToArray(),
                Handlers = new delegate*<Cpu, ref Instruction, void>[ins.Count] };
            for (int k = 0; k < b.Count; k++) b.Handlers[k] = CodeCache.HandlerFor(ref b.Instrs[k], 64);
            blocks.Add(b);
        }
        if (blocks.Count == 0) { Console.WriteLine($"jit-compile: no blocks in {file}"); return 2; }
        Console.WriteLine($"{blocks.Count} blocks, {blocks.Sum(b => b.Count)} instructions, {passes} passes");
        for (int p = 0; p < passes; p++)
        {
            long il = 0, emit = 0, jit = 0, inlined = 0, allocEmit = 0, allocJit = 0;
            // Per block (IL bytes, .NET JIT microseconds), for the least-squares cost model printed after the pass.
            var fit = new List<(double Il, double Us)>(blocks.Count);
            double tc0 = ThreadCpuMs();
            int methods = 0;
            foreach (var unit in Units(blocks, bundle))
            {
                long a0 = GC.GetAllocatedBytesForCurrentThread();
                long t0 = Stopwatch.GetTimestamp();
                var (method, ilBytes, inl) = Emit(unit);
                long t1 = Stopwatch.GetTimestamp();
                long a1 = GC.GetAllocatedBytesForCurrentThread();
                JitCompiler.Prepare(method);
                long t2 = Stopwatch.GetTimestamp();
                allocEmit += a1 - a0; allocJit += GC.GetAllocatedBytesForCurrentThread() - a1;
                methods++;
                il += ilBytes; inlined += inl; emit += t1 - t0; jit += t2 - t1;
                fit.Add((ilBytes, (t2 - t1) * 1e6 / Stopwatch.Frequency));
                if (p == passes - 1 && perBlock != null)
                    File.AppendAllText(perBlock, $"{ilBytes} {unit.Sum(b => b.Count)} {(t2 - t1) * 1e6 / Stopwatch.Frequency:F1}\n");
            }
            double threadCpu = ThreadCpuMs() - tc0;
            double ms(long t) => t * 1000.0 / Stopwatch.Frequency;
            Console.WriteLine($"pass {p + 1}: IL {il / 1024.0:F0} KiB ({il / (double)blocks.Count:F0} B/block), emit {ms(emit):F0} ms, .NET JIT {ms(jit):F0} ms " +
                              $"({ms(jit) * 1000 / blocks.Count:F0} us/block), this thread's CPU {threadCpu:F0} ms ({threadCpu * 1000 / blocks.Count:F0} us/block)");
            // The .NET JIT's cost per method and per IL byte: what a change to the emitted IL can and cannot save.
            double mx = fit.Average(f => f.Il), my = fit.Average(f => f.Us);
            double sxx = fit.Sum(f => (f.Il - mx) * (f.Il - mx)), slope = sxx > 0 ? fit.Sum(f => (f.Il - mx) * (f.Us - my)) / sxx : 0;
            // Managed allocation per block: the garbage the VM's collections (which stop the vCPUs) have to deal with.
            Console.WriteLine($"        managed allocation: emit {allocEmit / (double)blocks.Count / 1024:F1} KiB/block, .NET JIT {allocJit / (double)blocks.Count / 1024:F1} KiB/block");
            Console.WriteLine($"        .NET JIT per method ~ {my - slope * mx:F0} us + {slope:F3} us per IL byte (least squares over {fit.Count} methods of {blocks.Count / (double)methods:F2} blocks)");
        }
        PrintMachineCode(blocks, bundle);
        if (BlockCompiler.IlStats is { } st)
            foreach (var kv in st.OrderByDescending(kv => kv.Value.Bytes).Take(40))
                Console.WriteLine($"{kv.Key,-24} n={kv.Value.N,6} bytes={kv.Value.Bytes,8} avg={kv.Value.Bytes / (double)kv.Value.N:F0}");
        return 0;
    }

    /// <summary>One unit's IL, as the compiler emits it: a block alone, or several in a bundle (not yet compiled by the .NET JIT).</summary>
    private static (System.Reflection.Emit.DynamicMethod Method, int IlBytes, int Inlined) Emit(Block[] unit)
    {
        if (unit.Length > 1)
        {
            var rb = BlockCompiler.CompileBundle(unit, BlockCompiler.TierUpRuns);
            return (rb.Method, rb.IlBytes, rb.Inlined);
        }
        var r = BlockCompiler.Compile(unit[0]) ?? throw new InvalidOperationException($"block {unit[0].Ip:x} not compiled");
        return (r.Method, r.IlBytes, r.Inlined);
    }

    /// <summary>
    /// The machine code the .NET JIT makes for the blocks (the compiled tier's budget is kept in IL bytes; this gives the
    /// ratio): one more pass, untimed, as the runtime's JIT events add work to every compilation.
    /// </summary>
    private static void PrintMachineCode(List<Block> blocks, int bundle)
    {
        using var sizes = new JitCodeSizeListener();
        var wait = TimeSpan.FromSeconds(10);
        if (!sizes.Sync(wait)) { Console.WriteLine("machine code: not reported (the runtime's JIT events did not arrive)"); return; }
        long il = 0;
        foreach (var unit in Units(blocks, bundle))
        {
            var (method, ilBytes, _) = Emit(unit);
            JitCompiler.Prepare(method);
            il += ilBytes;
        }
        if (!sizes.Sync(wait)) { Console.WriteLine("machine code: not reported (the runtime's JIT events stopped)"); return; }
        var (code, methods) = sizes.Totals;
        Console.WriteLine($"machine code {code / 1024.0:F0} KiB in {methods} methods ({code / (double)blocks.Count:F0} B/block, {code / (double)il:F2} x the IL)");
    }

    /// <summary>The blocks in file order, <paramref name="bundle"/> at a time (and at most as many instructions as the compiler bundles).</summary>
    private static IEnumerable<Block[]> Units(List<Block> blocks, int bundle)
    {
        var unit = new List<Block>();
        int instrs = 0;
        foreach (var b in blocks)
        {
            if (unit.Count > 0 && (unit.Count >= bundle || instrs + b.Count > BlockCompiler.BundleMaxInstructions))
            {
                yield return unit.ToArray();
                unit.Clear();
                instrs = 0;
            }
            unit.Add(b);
            instrs += b.Count;
        }
        if (unit.Count > 0) yield return unit.ToArray();
    }
}
