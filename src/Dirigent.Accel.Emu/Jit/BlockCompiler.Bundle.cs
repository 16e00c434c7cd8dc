using System.Reflection;
using System.Reflection.Emit;
using Dirigent.Accel.Emu.Core;
using Label = System.Reflection.Emit.Label;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>
/// Bundles (off by default; DIRIGENT_JIT_BUNDLE=N): several unrelated hot blocks compiled into one method that
/// branches on the block it is entered with (<see cref="Block.JitEntry"/>; the dispatcher and chaining exits pass the
/// block as the method's first argument, as for any compiled block). Each block's code is what it would be in a
/// method of its own; the blocks share what the .NET JIT charges per method: the runtime's fixed cost, the entry (the
/// register array's address) and the chaining tails with their tail call. On a boot's 5308 blocks (`bench
/// jit-compile FILE --bundle K`) the compiler's CPU per block fell from 338 us (alone) to 219 us (4 per method) and
/// 183 us (8). In the VM that drained the compiler's queue sooner (blocks run interpreted while they wait in it):
/// uptime at /init 1.875 s against 1.975 s (medians of six, ranges 1.86-1.89 and 1.92-2.02). But a warm shell loop
/// whose blocks had been bundled ran 10-15 % slower (0.50-0.54 s against 0.43-0.47 s per 20000 iterations), though
/// the .NET JIT's code for a member's body and for the same block alone are alike. The difference is the frame: the
/// .NET JIT gives a method one prolog and epilog, which save and restore every callee-saved register any member
/// uses (DOTNET_JitDisasm: six pushes and the frame on every entry and again before every chaining tail call),
/// where a short block alone saves only RBP; for blocks of two to five instructions chained to each other that is
/// most of their cost. No IL controls it, so bundles are a choice (a faster boot, slower steady code), not the
/// default. Compiling a bundled block again alone once it has run <see cref="TierUpRuns"/> times
/// (DIRIGENT_JIT_TIER_UP=N) brought the warm loop back, but recompiled ~30 % of the bundled blocks and lost the
/// boot's gain. Regions (BlockCompiler.Region.cs) are compiled alone.
/// </summary>
internal sealed partial class BlockCompiler
{
    /// <summary>Blocks per bundle at most (DIRIGENT_JIT_BUNDLE=N; 1, the default: a method per block). <see cref="JitMode.Always"/>
    /// bundles every block whatever this says, so the differential tests run bundle code.</summary>
    internal static readonly int BundleMaxBlocks =
        int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_JIT_BUNDLE"), out int bm) ? Math.Max(1, bm) : 1;
    /// <summary>Instructions per bundle at most: the .NET JIT's time per IL byte grows with the method.</summary>
    internal const int BundleMaxInstructions = 160;

    private static readonly FieldInfo FJitEntry = typeof(Block).GetField(nameof(Block.JitEntry))!,
        FBundleRuns = typeof(Block).GetField(nameof(Block.BundleRuns))!;
    private static readonly MethodInfo MTierUp = typeof(Cpu).GetMethod(nameof(Cpu.JitTierUp), BindingFlags.Instance | BindingFlags.NonPublic)!;

    /// <summary>Entries into a bundled block before it is compiled again alone (DIRIGENT_JIT_TIER_UP=N; 0, the default: never).</summary>
    internal static readonly int TierUpRuns =
        int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_JIT_TIER_UP"), out int tu) ? Math.Max(0, tu) : 0;

    /// <summary>Whether b may go into a bundle: 64-bit, valid, never bundled before (its entry index is fixed for good).</summary>
    internal static bool Bundleable(Block b) => b.Bits == 64 && b.Count > 0 && b.Valid && b.JitEntry < 0;

    /// <summary>
    /// Compiles blocks (each <see cref="Bundleable"/>, none a region head) into one method; their
    /// <see cref="Block.JitEntry"/> are set here, before anything can run the method. Returns each block's delegate
    /// (closed over the block) and the method's IL bytes and inline instructions.
    /// </summary>
    /// <paramref name="tierUpRuns"/>: entries before each block asks to be compiled alone (0: never).
    public static (CompiledCode[] Codes, int IlBytes, int Inlined, DynamicMethod Method) CompileBundle(Block[] blocks, int tierUpRuns)
    {
        for (int j = 0; j < blocks.Length; j++) { blocks[j].JitEntry = j; blocks[j].BundleRuns = tierUpRuns; }
        BlockCompiler c;
        try
        {
            c = new BlockCompiler(blocks[0], allowLoop: true);
            c.EmitBundle(blocks, tierUpRuns > 0);
        }
        catch (PeelMismatch)
        {
            c = new BlockCompiler(blocks[0], allowLoop: false);
            c.EmitBundle(blocks, tierUpRuns > 0);
        }
        var codes = new CompiledCode[blocks.Length];
        for (int j = 0; j < blocks.Length; j++) codes[j] = (CompiledCode)c._dm.CreateDelegate(typeof(CompiledCode), blocks[j]);
        return (codes, c.IlBytes, c.Inlined, c._dm);
    }

    private void EmitBundle(Block[] blocks, bool tierUp)
    {
        EmitGprInit();
        var labels = new Label[blocks.Length];
        for (int j = 0; j < labels.Length; j++) labels[j] = _il.DefineLabel();
        // By arg0.JitEntry: entry 0 (and nothing else: entries are set before the method exists) falls through; a
        // compare and branch per entry (a switch's one shared indirect jump measured no better).
        var entry = _il.DeclareLocal(typeof(int));
        if (tierUp)
        {
            // if (--arg0.BundleRuns == 0) cpu.JitTierUp(arg0): once, when the entry's count runs out.
            Label counted = _il.DefineLabel();
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Ldfld, FBundleRuns);
            _il.Emit(OpCodes.Ldc_I4_1);
            _il.Emit(OpCodes.Sub);
            _il.Emit(OpCodes.Dup);
            _il.Emit(OpCodes.Stloc, entry);
            _il.Emit(OpCodes.Stfld, FBundleRuns);
            _il.Emit(OpCodes.Ldloc, entry);
            _il.Emit(OpCodes.Brtrue, counted);
            _il.Emit(OpCodes.Ldarg_1);
            _il.Emit(OpCodes.Ldarg_0);
            _il.Emit(OpCodes.Call, MTierUp);
            _il.MarkLabel(counted);
        }
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ldfld, FJitEntry);
        _il.Emit(OpCodes.Stloc, entry);
        for (int j = blocks.Length - 1; j >= 1; j--)
        {
            _il.Emit(OpCodes.Ldloc, entry);
            _il.Emit(OpCodes.Ldc_I4, j);
            _il.Emit(OpCodes.Beq, labels[j]);
        }
        for (int j = 0; j < blocks.Length; j++)
        {
            _il.MarkLabel(labels[j]);
            // Each block starts as a method of its own would: its registers in the CPU, the flags the CPU's.
            _b = blocks[j];
            Array.Clear(_loaded);
            Array.Clear(_dirty);
            Array.Clear(_inMemory);
            _fop = LazyOp.None;
            _fsize = 0;
            _sseChecked = false;
            _selfLoop = false;
            _pass = 1;
            _dynamicRipAfter = null;
            // (Each entry's path is its own: what it needs is loaded after its label.)
            if (HasInlineSse(_b)) LoadXmmArray();
            EmitBlock();
        }
        EmitChainTails();
        IlBytes = _il.ILOffset;
    }
}
