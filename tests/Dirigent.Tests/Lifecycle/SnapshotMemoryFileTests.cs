using Dirigent.Machine.Memory;
using Dirigent.Tests.Storage;
using Dirigent.Vmm.Snapshots;

namespace Dirigent.Tests.Lifecycle;

/// <summary>The snapshot memory file: sparse on save, identical contents whether restored by copy or by mapping.</summary>
public class SnapshotMemoryFileTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public unsafe void Memory_round_trips_through_the_file_and_guest_writes_never_reach_it(bool map)
    {
        const int seed = 9;
        var rng = new Random(seed);
        using var dir = new TempDir();
        using var src = new GuestMemory(16UL << 20);
        // Scattered non-zero pages, some partly zero, the rest of RAM untouched.
        var pages = Enumerable.Range(0, 40).Select(_ => (ulong)rng.Next(0, 4096) * 4096).Distinct().ToList();
        foreach (ulong p in pages)
        {
            var b = new byte[4096];
            rng.NextBytes(b.AsSpan(0, rng.Next(1, 4096)));
            src.Write(p, b);
        }
        string file = dir["memory"];
        SnapshotFiles.WriteMemory(src, file);
        byte[] fileBefore = File.ReadAllBytes(file);

        using var dst = new GuestMemory(16UL << 20);
        SnapshotFiles.ReadMemory(dst, file, mapPrivate: map);
        var a = new Span<byte>(src.Regions[0].Host, (int)src.RamSize);
        var b2 = new Span<byte>(dst.Regions[0].Host, (int)dst.RamSize);
        Assert.True(a.SequenceEqual(b2), $"restored RAM differs (seed {seed}, map {map})");
        // The restored guest writes: its RAM changes, the snapshot file does not.
        dst.Write(pages[0], new byte[4096]);
        dst.Write(8192 * 1024, [1, 2, 3]);
        Assert.Equal(fileBefore, File.ReadAllBytes(file));
    }
}
