using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Dirigent.Accel.Emu.Native;
using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu.Core;

/// <summary>The native first tier (Native/NativeCompiler.cs): when a block's native code runs, and how it is entered.</summary>
public sealed unsafe partial class Cpu
{
    private NativeCompiler? _native;
    private int _nativeThreshold;
    private static NativeLayout? s_nativeLayout;

    /// <summary>DIRIGENT_NATIVE: 0/off, always (every 64-bit block before it first runs), else on (x86-64 Linux hosts).</summary>
    private void InitNative()
    {
        _nativeThreshold = _codeCache.NativeThreshold ?? NativeThresholdFromEnvironment();
        if (_nativeThreshold <= 0) return;
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64 || !OperatingSystem.IsLinux()) return;
        var arena = NativeArena.TryCreate();
        if (arena == null) { LogOnce("native tier off: no executable memory"); return; }
        _native = new NativeCompiler(s_nativeLayout ??= MeasureLayout(), arena, this);
    }

    /// <summary>DIRIGENT_NATIVE=0/off: 0; always: 1; else DIRIGENT_NATIVE_THRESHOLD or the default.</summary>
    internal static int NativeThresholdFromEnvironment()
    {
        string? v = Environment.GetEnvironmentVariable("DIRIGENT_NATIVE")?.Trim().ToLowerInvariant();
        if (v is "0" or "off" or "false" or "no") return 0;
        if (v is "always" or "force") return 1;
        return int.TryParse(Environment.GetEnvironmentVariable("DIRIGENT_NATIVE_THRESHOLD"), out int t) && t > 0 ? t : DefaultNativeThreshold;
    }

    /// <summary>Runs before a block's native code is made: blocks run fewer times are interpreted only.</summary>
    internal const int DefaultNativeThreshold = 4;

    internal NativeCompiler? NativeTier => _native;

    private NativeLayout MeasureLayout()
    {
        var l = new NativeLayout();
        fixed (ulong* a = &_flags)
        fixed (ulong* rip = &Rip)
        fixed (LazyOp* op = &_lazyOp)
        fixed (byte* size = &_lazySize)
        fixed (ulong* res = &_lazyRes)
        fixed (ulong* la = &_lazyA)
        fixed (ulong* lb = &_lazyB)
        fixed (bool* ci = &_lazyCarryIn)
        fixed (TlbEntry** r = &_tlbR)
        fixed (TlbEntry** w = &_tlbW)
        fixed (SegmentState* s = Sreg)
        {
            byte* b = (byte*)a;
            l.Rip = (int)((byte*)rip - b);
            l.LazyOp = (int)((byte*)op - b);
            l.LazySize = (int)(size - b);
            l.LazyRes = (int)((byte*)res - b);
            l.LazyA = (int)((byte*)la - b);
            l.LazyB = (int)((byte*)lb - b);
            l.LazyCarryIn = (int)((byte*)ci - b);
            l.TlbR = (int)((byte*)r - b);
            l.TlbW = (int)((byte*)w - b);
            l.SegSize = sizeof(SegmentState);
            l.SegBaseOffset = (int)((byte*)&s[0].Base - (byte*)s);
        }
        return l;
    }

    /// <summary>
    /// The chained loop's interpreted path with the native tier on: runs the block's native code, made once the block
    /// has run <see cref="_nativeThreshold"/> times, and returns how many of its instructions that code completed:
    /// b.Count (it set RIP), fewer (RIP is set at the one the interpreter goes on with), or 0 when there is no code
    /// to run (the interpreter runs the whole block).
    /// </summary>
    private int RunNative(Block b, NativeCompiler nat)
    {
        var nc = b.Native;
        if (nc == null || nc.Gen != nat.Gen || nc.Owner != this)
        {
            // Another vCPU's code (its own arena) is not ours to run; our own stale code is made again at once; a
            // block without code gets it at its threshold-th run.
            if (nc != null ? nc.Owner != this : ++b.NativeHeat != _nativeThreshold) return 0;
            nc = nat.Compile(b);
            b.Native = nc;
            if (nc == null) { b.NativeHeat = int.MinValue; return 0; }
        }
        _currentBlockId = b.Id;
        int k;
        fixed (ulong* g = Gpr)
        fixed (ulong* anchor = &_flags)
        fixed (SegmentState* s = Sreg)
            k = ((delegate* unmanaged[SuppressGCTransition]<ulong*, ulong*, SegmentState*, int>)nc.Entry)(g, anchor, s);
        _instret += (ulong)k;
        if (k < b.Count) Rip = b.Instrs[k].IP;
        else
        {
            InstrIp = b.Instrs[k - 1].IP;
            _currentBlockId = 0;
        }
        return k;
    }
}
