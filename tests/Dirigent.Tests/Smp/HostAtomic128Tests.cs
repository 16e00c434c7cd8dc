using System.Runtime.InteropServices;
using Dirigent.Accel.Emu.Core;

namespace Dirigent.Tests.Smp;

/// <summary>
/// The 16-byte compare-exchange behind CMPXCHG16B: threads increment both halves of one pair together with CAS
/// loops while a reader does plain 8-byte loads (as another vCPU's MOV or a device's DMA would) and must never see
/// a pair that is half updated. Final values are exact.
/// </summary>
public unsafe class HostAtomic128Tests
{
    private const int Writers = 4, PerWriter = 200_000;
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(120);

    [Fact]
    public void NativeInstructionIsUsedOnX64Linux()
    {
        bool expected = OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;
        Assert.Equal(expected, HostAtomic128.IsNative);
    }

    [Fact]
    public void ConcurrentPairIncrementsAreExactAndNeverTorn()
    {
        ulong* pair = (ulong*)NativeMemory.AlignedAlloc(16, 16);
        try
        {
            pair[0] = 0;
            pair[1] = 0;
            var (torn, casTorn, reads) = Hammer(pair, HostAtomic128.CompareExchange, plainReads: true);
            Assert.Equal(0, torn);
            Assert.Equal(0, casTorn);
            Assert.True(reads > 0);
            Assert.Equal((ulong)(Writers * PerWriter), pair[0]);
            Assert.Equal((ulong)(Writers * PerWriter) << 1, pair[1]);
        }
        finally { NativeMemory.AlignedFree(pair); }
    }

    [Fact]
    public void LockFallbackIsExactAgainstItself()
    {
        ulong* pair = (ulong*)NativeMemory.AlignedAlloc(16, 16);
        try
        {
            pair[0] = 0;
            pair[1] = 0;
            // Plain readers could see a torn pair here (that is the fallback's documented limit): only CAS readers.
            var (_, casTorn, _) = Hammer(pair, HostAtomic128.CompareExchangeLocked, plainReads: false);
            Assert.Equal(0, casTorn);
            Assert.Equal((ulong)(Writers * PerWriter), pair[0]);
            Assert.Equal((ulong)(Writers * PerWriter) << 1, pair[1]);
        }
        finally { NativeMemory.AlignedFree(pair); }
    }

    [Fact]
    public void FailedCompareReturnsTheValueFound()
    {
        ulong* pair = (ulong*)NativeMemory.AlignedAlloc(16, 16);
        try
        {
            pair[0] = 0x1111_2222_3333_4444;
            pair[1] = 0x5555_6666_7777_8888;
            Assert.False(HostAtomic128.CompareExchange(pair, 1, 2, 3, 4, out ulong lo, out ulong hi));
            Assert.Equal((0x1111_2222_3333_4444UL, 0x5555_6666_7777_8888UL), (lo, hi));
            Assert.Equal((0x1111_2222_3333_4444UL, 0x5555_6666_7777_8888UL), (pair[0], pair[1]));
            Assert.True(HostAtomic128.CompareExchange(pair, lo, hi, 3, 4, out lo, out hi));
            Assert.Equal((0x1111_2222_3333_4444UL, 0x5555_6666_7777_8888UL), (lo, hi));
            Assert.Equal((3UL, 4UL), (pair[0], pair[1]));
        }
        finally { NativeMemory.AlignedFree(pair); }
    }

    private delegate bool Cas(ulong* p, ulong eLo, ulong eHi, ulong nLo, ulong nHi, out ulong oLo, out ulong oHi);

    /// <summary>
    /// Runs the writers (each step: lo += 1, hi += 2 in one CAS) and a reader until the writers are done. The reader
    /// reads the pair with a failing CAS, which must give hi == 2 * lo; with <paramref name="plainReads"/> it also
    /// loads lo then hi with plain loads: as both only grow, an untorn pair read in that order has hi >= 2 * lo.
    /// </summary>
    private static (int Torn, int CasTorn, long Reads) Hammer(ulong* pair, Cas cas, bool plainReads)
    {
        int done = 0, torn = 0, casTorn = 0;
        long reads = 0;
        // All start together, so the reader really overlaps the writers.
        using var start = new Barrier(Writers + 1);
        var writers = new Thread[Writers];
        for (int w = 0; w < Writers; w++)
        {
            writers[w] = new Thread(() =>
            {
                start.SignalAndWait(HangGuard);
                for (int k = 0; k < PerWriter; k++)
                {
                    while (true)
                    {
                        ulong lo = Volatile.Read(ref pair[0]), hi = Volatile.Read(ref pair[1]);
                        if (cas(pair, lo, hi, lo + 1, hi + 2, out _, out _)) break;
                    }
                }
                Interlocked.Increment(ref done);
            });
        }
        var reader = new Thread(() =>
        {
            start.SignalAndWait(HangGuard);
            while (Volatile.Read(ref done) < Writers)
            {
                // Mostly plain loads: the window in which a non-atomic pair update is half done is short.
                for (int k = 0; plainReads && k < 64; k++)
                {
                    ulong lo = Volatile.Read(ref pair[0]);
                    ulong hi = Volatile.Read(ref pair[1]);
                    if (hi < 2 * lo) torn++;
                }
                // Expected (~0, ~0) never matches, so this only reads (a locked CMPXCHG16B still writes the old value back).
                cas(pair, ~0UL, ~0UL, 0, 0, out ulong cLo, out ulong cHi);
                if (cHi != 2 * cLo) casTorn++;
                reads++;
            }
        });
        foreach (var t in writers) t.Start();
        reader.Start();
        foreach (var t in writers) Assert.True(t.Join(HangGuard));
        Assert.True(reader.Join(HangGuard));
        return (torn, casTorn, reads);
    }
}
