using System.Reflection;
using System.Reflection.Emit;
using Dirigent.Accel.Emu.Core;
using Iced.Intel;
using Label = System.Reflection.Emit.Label;

namespace Dirigent.Accel.Emu.Jit;

/// <summary>
/// Region compilation: a hot block and the blocks its direct exits reach on the same code page (a loop's body and
/// its head, the two sides of an if, the fall-through after a call site) go into one method, and an exit into one of
/// them is an IL branch. Between them the guest registers stay in IL locals and the flag record in locals (its
/// operation and size in two more, since the edges into a block come from different operations), so a jump inside
/// the region costs the retired count, the pending-event check and the page's validity check, where a chained exit
/// writes every register and the flags back, returns through the epilogue and enters the next method through its
/// prologue. It also makes fewer methods: the .NET JIT's fixed cost (~140 us per method) is paid once per region.
/// Why one page: code invalidation is by page, so a store into any member's code invalidates the head too (the
/// region checks the head's Valid at every inner edge, as a self-loop does), and the execute TLB that mapped the
/// head's page maps every member. Precision is unchanged: each member's instructions are emitted as in a block of its
/// own (its Block for handler calls and slow paths, its own count since the inner edge added the one before it).
/// </summary>
internal sealed partial class BlockCompiler
{
    /// <summary>Blocks per region at most (DIRIGENT_JIT_REGION=N; 0 or 1: no regions, one block per method).</summary>
    internal static readonly int RegionMaxBlocks =
        int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_JIT_REGION"), out int m) ? m : 8;
    internal static readonly bool RegionLoopsOnly = Environment.GetEnvironmentVariable("DIRIGENT_JIT_REGION_ALL") != "1";
    /// <summary>Instructions per region at most: the .NET JIT's time grows with the method.</summary>
    internal static readonly int RegionMaxInstructions =
        int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_JIT_REGION_INSTRUCTIONS"), out int mi) ? mi : 160;

    /// <summary>Compile-time only: the flag record is in locals, its operation in _fopL (0: the CPU's fields are current) and size in _fsizeL.</summary>
    private const LazyOp DynamicRecord = (LazyOp)202;
    private static readonly FieldInfo FRegion = typeof(Block).GetField(nameof(Block.Region))!;

    private readonly Block[]? _members;
    /// <summary>Member index of the block being emitted (_b); 0 is the head, the method's own block (arg 0).</summary>
    private int _member;
    private Dictionary<ulong, Label>? _regionLabels;
    private readonly bool[] _regionRegs = new bool[16];
    private LocalBuilder? _fopL, _fsizeL, _leaveRip;
    private Label _leaveAll;

    /// <summary>
    /// The region of head h: h, then (breadth first) the blocks at its members' constant exits that are decoded,
    /// on h's physical page, do not run onto the next page, and have run at least <paramref name="minHeat"/> times
    /// interpreted (or are compiled); null when there is none. A head compiled before keeps its region: its old
    /// method may still be running for a moment and reads members through <see cref="Block.Region"/>.
    /// </summary>
    internal static Block[]? BuildRegion(Block h, Func<ulong, ulong, Block?> lookup, int minHeat)
    {
        if (h.Region != null) return h.Region;
        if (RegionMaxBlocks < 2 || h.Page1 != ulong.MaxValue || h.Linear != h.Ip) return null;
        var list = new List<Block> { h };
        int instrs = h.Count;
        for (int j = 0; j < list.Count && list.Count < RegionMaxBlocks; j++)
        {
            foreach (ulong t in StaticTargets(list[j]))
            {
                if ((t >> 12) != (h.Ip >> 12) || list.Exists(x => x.Ip == t)) continue;
                Block? c = lookup(h.Phys - h.Ip + t, t);
                if (c == null || !c.Valid || c.Bits != 64 || c.Linear != t || c.Page0 != h.Page0 || c.Page1 != ulong.MaxValue || c.Count == 0)
                    continue;
                if (Volatile.Read(ref c.Heat) < minHeat && c.CompiledPtr == 0 && !c.RegionMember) continue;
                if (instrs + c.Count > RegionMaxInstructions) continue;
                list.Add(c);
                instrs += c.Count;
                if (list.Count >= RegionMaxBlocks) break;
            }
        }
        if (list.Count < 2) return null;
        if (RegionLoopsOnly && !list.Exists(x => StaticTargets(x).Contains(h.Ip))) return null;
        return list.ToArray();
    }

    /// <summary>The constant addresses block b's exits can go to (a Jcc's both ways, a JMP/CALL's target, a fall-through).</summary>
    private static IEnumerable<ulong> StaticTargets(Block b)
    {
        Instruction last = b.Instrs[b.Count - 1];
        if (last.Code.IsJccShortOrNear() && last.Op0Kind == OpKind.NearBranch64) return [last.NearBranch64, last.NextIP];
        if ((last.Code.IsJmpShortOrNear() && last.Op0Kind == OpKind.NearBranch64) || last.Code == Code.Call_rel32_64) return [last.NearBranch64];
        if (last.FlowControl == Iced.Intel.FlowControl.Next) return [last.NextIP];
        return [];
    }

    /// <summary>Every instruction is inline or a handler that keeps chaining: the block's exits may chain (and, in a region, branch).</summary>
    private static bool Chainable(Block b)
    {
        var ins = b.Instrs;
        int n = b.Count;
        for (int k = 0; k < n - 1; k++) if (!CanInline(ref ins[k]) && !HandlerKeepsChaining(ref ins[k])) return false;
        return CanInline(ref ins[n - 1]) || IsInlineBranch(ref ins[n - 1]);
    }

    private void EmitRegion()
    {
        var members = _members!;
        EmitGprInit();
        bool sse = false;
        foreach (var m in members)
            for (int k = 0; k < m.Count && !sse; k++) sse = Classify(ref m.Instrs[k]) == Kind.Sse;
        if (sse) LoadXmmArray();
        foreach (var m in members)
            foreach (int r in GprsUsed(m.Instrs, m.Count)) _regionRegs[r] = true;
        // Every register of the region in its local from here on (written back at every exit), as in a self-loop.
        for (int r = 0; r < 16; r++) if (_regionRegs[r]) Load(r);
        _fopL = _il.DeclareLocal(typeof(int));
        _fsizeL = _il.DeclareLocal(typeof(int));
        _leaveRip = _il.DeclareLocal(typeof(ulong));
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Stloc, _fopL);
        _leaveAll = _il.DefineLabel();
        _regionLabels = new Dictionary<ulong, Label>();
        var labels = new Label[members.Length];
        for (int j = 0; j < members.Length; j++) _regionLabels[members[j].Ip] = labels[j] = _il.DefineLabel();
        for (int j = 0; j < members.Length; j++)
        {
            _member = j;
            _b = members[j];
            _il.MarkLabel(labels[j]);
            // The state at every member's start: the region's registers in locals, the flags in the dynamic record.
            for (int r = 0; r < 16; r++) _loaded[r] = _dirty[r] = _regionRegs[r];
            _fop = DynamicRecord;
            _fsize = 0;
            _sseChecked = false;
            _tailSamePage = _tailOtherPage = null;
            _chainable = Chainable(_b);
            EmitBody();
            // Each member's chaining exits return the member (the dispatcher keeps its links), so each has its tails.
            EmitChainTails();
        }
        // An inner edge that found an event pending or the page's code changed: leave for _leaveRip.
        _member = 0;
        _b = _head;
        _il.MarkLabel(_leaveAll);
        for (int r = 0; r < 16; r++)
            if (_regionRegs[r]) EmitLocalToGpr(r);
        EmitDynamicSpill();
        StoreField(FRip, () => _il.Emit(OpCodes.Ldloc, _leaveRip));
        _il.Emit(OpCodes.Ldarg_0);
        _il.Emit(OpCodes.Ret);
        IlBytes = _il.ILOffset;
    }

    /// <summary>An exit to <paramref name="target"/> that is a member of this region: a branch to it, unless something needs the dispatcher.</summary>
    private bool TryRegionEdge(ulong target, int count, Slot slot)
    {
        if (_regionLabels == null || slot == Slot.None || !_chainable || _dynamicRipAfter != null) return false;
        if (!_regionLabels.TryGetValue(target, out Label dst)) return false;
        AddInstret(count);
        // The flag record into the member's entry form (compile-time state is left as it is: the caller may go on
        // emitting the other way of a Jcc).
        switch (_fop)
        {
            case DynamicRecord: break;
            case LazyOp.None:
                _il.Emit(OpCodes.Ldc_I4_0);
                _il.Emit(OpCodes.Stloc, _fopL!);
                break;
            case ShiftRecord or MulRecord:
                SpillFlags();
                _il.Emit(OpCodes.Ldc_I4_0);
                _il.Emit(OpCodes.Stloc, _fopL!);
                break;
            default:
                _il.Emit(OpCodes.Ldc_I4, (int)_fop);
                _il.Emit(OpCodes.Stloc, _fopL!);
                _il.Emit(OpCodes.Ldc_I4, _fsize);
                _il.Emit(OpCodes.Stloc, _fsizeL!);
                break;
        }
        // Registers a handler call left in the CPU go back into their locals.
        for (int r = 0; r < 16; r++)
            if (_regionRegs[r] && !_loaded[r]) EmitGprToLocal(r);
        Label leave = _il.DefineLabel();
        EmitStayChecks(dst, leave);
        _il.MarkLabel(leave);
        _il.Emit(OpCodes.Ldc_I8, (long)target);
        _il.Emit(OpCodes.Stloc, _leaveRip!);
        _il.Emit(OpCodes.Br, _leaveAll);
        return true;
    }

    /// <summary>The dynamic record to the CPU's lazy-flag fields, when it holds one (compile-time state unchanged).</summary>
    private void EmitDynamicSpill()
    {
        Label skip = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _fopL!);
        _il.Emit(OpCodes.Brfalse, skip);
        StoreField(FLazyOp, () => _il.Emit(OpCodes.Ldloc, _fopL!));
        StoreField(FLazySize, () => _il.Emit(OpCodes.Ldloc, _fsizeL!));
        StoreField(FLazyRes, () => _il.Emit(OpCodes.Ldloc, _fr));
        StoreField(FLazyA, () => _il.Emit(OpCodes.Ldloc, _fa));
        StoreField(FLazyB, () => _il.Emit(OpCodes.Ldloc, _fb));
        // Read only for INC/DEC records (ADC/SBB records are never made by compiled code).
        StoreField(FLazyCarryIn, () => _il.Emit(OpCodes.Ldloc, _fcin));
        _il.MarkLabel(skip);
    }

    /// <summary>
    /// INC/DEC's carry-in when the record is not known at compile time (the CPU's, at a block's start; or a region
    /// member's dynamic record): CF from the record's operation at run time for the common ones (INC/DEC: its carry-in,
    /// SUB/CMP: a &lt; b, logic: 0), else through the CPU (the record written back first). A call to GetCF at every
    /// such INC/DEC was 3% of a shell loop's time.
    /// </summary>
    private void PushCarryOfUnknownRecord()
    {
        _fopL ??= _il.DeclareLocal(typeof(int));
        _fsizeL ??= _il.DeclareLocal(typeof(int));
        if (_fop == LazyOp.None)
        {
            // The CPU's record into the locals: the same fields, so writing it back later changes nothing.
            LoadField(FLazyOp, _fopL);
            LoadField(FLazySize, _fsizeL);
            LoadField(FLazyA, _fa);
            LoadField(FLazyB, _fb);
            LoadField(FLazyRes, _fr);
            LoadField(FLazyCarryIn, _fcin);
            _fop = DynamicRecord;
        }
        Label done = _il.DefineLabel(), incDec = _il.DefineLabel(), notIncDec = _il.DefineLabel(), notSub = _il.DefineLabel(), slow = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _fopL);
        _il.Emit(OpCodes.Ldc_I4, (int)LazyOp.Inc);
        _il.Emit(OpCodes.Beq, incDec);
        _il.Emit(OpCodes.Ldloc, _fopL);
        _il.Emit(OpCodes.Ldc_I4, (int)LazyOp.Dec);
        _il.Emit(OpCodes.Bne_Un, notIncDec);
        _il.MarkLabel(incDec);
        _il.Emit(OpCodes.Ldloc, _fcin);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(notIncDec);
        _il.Emit(OpCodes.Ldloc, _fopL);
        _il.Emit(OpCodes.Ldc_I4, (int)LazyOp.Sub);
        _il.Emit(OpCodes.Bne_Un, notSub);
        // (The interpreter's records may hold unmasked operands: both are masked to the size, as GetCF does.)
        _il.Emit(OpCodes.Ldloc, _fa);
        EmitDynamicSizeMask();
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldloc, _fb);
        EmitDynamicSizeMask();
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Clt_Un);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(notSub);
        _il.Emit(OpCodes.Ldloc, _fopL);
        _il.Emit(OpCodes.Ldc_I4, (int)LazyOp.Logic);
        _il.Emit(OpCodes.Bne_Un, slow);
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Br, done);
        _il.MarkLabel(slow);
        EmitDynamicSpill();
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Call, MGetCF);
        _il.MarkLabel(done);
    }

    /// <summary>Pushes the mask of the dynamic record's size: ~0UL >> (64 - 8 * size).</summary>
    private void EmitDynamicSizeMask()
    {
        _il.Emit(OpCodes.Ldc_I8, -1L);
        _il.Emit(OpCodes.Ldc_I4, 64);
        _il.Emit(OpCodes.Ldloc, _fsizeL!);
        _il.Emit(OpCodes.Ldc_I4_3);
        _il.Emit(OpCodes.Shl);
        _il.Emit(OpCodes.Sub);
        _il.Emit(OpCodes.Shr_Un);
    }

    private void LoadField(FieldInfo f, LocalBuilder to)
    {
        _il.Emit(OpCodes.Ldarg_1);
        _il.Emit(OpCodes.Ldfld, f);
        _il.Emit(OpCodes.Stloc, to);
    }

    /// <summary>Before code that needs the record's operation at compile time: the dynamic record goes to the CPU.</summary>
    private void Materialize()
    {
        if (_fop != DynamicRecord) return;
        EmitDynamicSpill();
        _fop = LazyOp.None;
    }

    /// <summary>Pushes the Block being emitted: the method's own (arg 0), or a region member read from its head.</summary>
    private void EmitLdBlock()
    {
        _il.Emit(OpCodes.Ldarg_0);
        if (_member == 0) return;
        _il.Emit(OpCodes.Ldfld, FRegion);
        _il.Emit(OpCodes.Ldc_I4, _member);
        _il.Emit(OpCodes.Ldelem_Ref);
    }
}
