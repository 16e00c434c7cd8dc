using System.Diagnostics.Tracing;
using System.Reflection.Emit;
using Dirigent.Accel.Emu.Jit;

namespace Dirigent.Bench;

/// <summary>
/// The machine code the .NET JIT made for the compiled tier's methods (the DynamicMethods named <c>jit_...</c>): the
/// runtime's MethodLoadVerbose events (its JIT keyword) carry each method's native code size, which no API returns.
/// The events arrive on a dispatch thread some time after the compilation, so <see cref="Sync"/> compiles a marker
/// method of its own and waits for its event: everything compiled before it has been counted by then.
/// </summary>
internal sealed class JitCodeSizeListener : EventListener
{
    private const EventKeywords JitKeyword = (EventKeywords)0x10;
    private const int MethodLoadVerbose = 143;
    private const string MarkerPrefix = "jit_size_marker_";
    // Field initializers run before the base constructor, which may already call OnEventSourceCreated.
    private readonly SemaphoreSlim _markers = new(0);
    private long _bytes, _methods;
    private int _nextMarker;

    /// <summary>Native code bytes and methods of the blocks' methods counted so far.</summary>
    public (long Bytes, long Methods) Totals => (Interlocked.Read(ref _bytes), Interlocked.Read(ref _methods));

    protected override void OnEventSourceCreated(EventSource source)
    {
        if (source.Name == "Microsoft-Windows-DotNETRuntime") EnableEvents(source, EventLevel.Verbose, JitKeyword);
    }

    protected override void OnEventWritten(EventWrittenEventArgs e)
    {
        if (e.EventId != MethodLoadVerbose || e.PayloadNames is not { } names || e.Payload is not { } payload) return;
        int nameAt = names.IndexOf("MethodName"), sizeAt = names.IndexOf("MethodSize");
        if (nameAt < 0 || sizeAt < 0 || payload[nameAt] is not string name) return;
        if (name.StartsWith(MarkerPrefix, StringComparison.Ordinal)) { _markers.Release(); return; }
        if (!name.StartsWith("jit_", StringComparison.Ordinal)) return;
        Interlocked.Add(ref _bytes, Convert.ToInt64(payload[sizeAt], System.Globalization.CultureInfo.InvariantCulture));
        Interlocked.Increment(ref _methods);
    }

    /// <summary>Waits until the events of every method compiled so far have been counted; false if the runtime sent none in time.</summary>
    public bool Sync(TimeSpan timeout)
    {
        var marker = new DynamicMethod(MarkerPrefix + Interlocked.Increment(ref _nextMarker), typeof(void), Type.EmptyTypes, typeof(JitCodeSizeListener).Module);
        marker.GetILGenerator().Emit(OpCodes.Ret);
        JitCompiler.Prepare(marker);
        return _markers.Wait(timeout);
    }
}
