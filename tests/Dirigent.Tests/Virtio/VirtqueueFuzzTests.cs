using System.Diagnostics;
using Dirigent.Devices.Virtio;
using Dirigent.Devices.Virtio.Block;
using Dirigent.Devices.Virtio.Rng;
using Xunit.Abstractions;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Virtio;

/// <summary>
/// Random virtqueue contents (descriptors, indirect tables, avail rings and indices, suppression fields, request
/// headers) in a small guest RAM, fed to virtio-blk and virtio-rng. The VMM must never throw, and every byte a
/// device writes must land inside a buffer some descriptor the device may follow (the queue's table, or an
/// indirect table it points at) marked device-writable.
/// </summary>
public unsafe class VirtqueueFuzzTests(ITestOutputHelper output)
{
    private const ushort QueueSize = 16;
    private const ulong Ram = 0x1_0000;

    public static TheoryData<string, int, int> Devices => new() { { "blk", 100_000, 1 }, { "rng", 100_000, 2 } };

    [Theory]
    [MemberData(nameof(Devices))]
    public void RandomQueuesNeverCrashAndWritesStayInWritableBuffers(string kind, int iterations, int seed)
    {
        var disk = new MemoryDisk(64 * 1024);
        IVirtioDevice dev = kind == "blk" ? new VirtioBlock(disk, "fuzz", useWorkerThread: false) : new VirtioRng();
        using var h = new VirtioHarness(dev, Ram);
        var ram = new Span<byte>(h.Mem.TryGetHostPointer(0, Ram), (int)Ram);
        var rnd = new Random(seed);
        var writes = new List<(ulong Gpa, ulong Len)>();
        bool recording = false;
        h.Mem.ExternalWrite += (gpa, len) => { if (recording) writes.Add((gpa, len)); };
        h.EnableMsix();
        h.ProgramMsixVector(0, 0x40);
        h.ProgramMsixVector(1, 0x41);
        h.Start(Version1 | RingIndirectDesc | RingEventIdx, QueueSize, 0);

        var sw = Stopwatch.StartNew();
        int resets = 0, completions = 0, deviceWrites = 0;
        for (int it = 0; it < iterations; it++)
        {
            if ((h.Status & StatusNeedsReset) != 0 || rnd.Next(200) == 0)
            {
                h.Common(0x14, 1, 0);
                ulong f = Version1 | (rnd.Next(2) == 0 ? RingIndirectDesc : 0) | (rnd.Next(2) == 0 ? RingEventIdx : 0);
                h.Start(f, (ushort)(1 << rnd.Next(0, 5)), 0);
                resets++;
            }
            if (it % 64 == 0) FillHeaders(ram, rnd);
            ushort size = h.QueueSize;
            var q = h.Dev.Queue(0);
            if (rnd.Next(2) == 0)
            {
                var heads = WellFormed(ram, rnd, size, (h.Dev.NegotiatedFeatures & RingIndirectDesc) != 0);
                for (int k = 0; k < heads.Count; k++)
                    BitConverter.TryWriteBytes(ram[((int)AvailBase + 4 + 2 * ((q.LastAvailIndex + k) % size))..], heads[k]);
                BitConverter.TryWriteBytes(ram[((int)AvailBase + 2)..], (ushort)(q.LastAvailIndex + heads.Count));
                BitConverter.TryWriteBytes(ram[((int)AvailBase + 4 + 2 * size)..], (ushort)rnd.Next(65536));
                Kick(h, writes, ref recording, ref completions, ref deviceWrites, ram, size, it);
                continue;
            }
            for (int i = 0; i < size; i++) RandomDescriptor(ram, (int)DescBase + 16 * i, rnd, size);
            // Give some indirect descriptors a plausible table to walk.
            for (int i = 0; i < size; i++)
            {
                int d = (int)DescBase + 16 * i;
                if ((BitConverter.ToUInt16(ram[(d + 12)..]) & DescFlagIndirect) == 0) continue;
                ulong t = BitConverter.ToUInt64(ram[d..]);
                uint len = BitConverter.ToUInt32(ram[(d + 8)..]);
                if (t < TableBase || t + len > BufferBase || len > 16 * 32 || rnd.Next(4) == 0) continue;
                for (uint k = 0; k + 16 <= len; k += 16) RandomDescriptor(ram, (int)(t + k), rnd, (int)(len / 16));
            }
            ushort availIdx = rnd.Next(30) == 0 ? (ushort)rnd.Next(65536) : (ushort)(q.LastAvailIndex + rnd.Next(0, 5));
            for (int k = 0; k < size; k++)
                BitConverter.TryWriteBytes(ram[((int)AvailBase + 4 + 2 * k)..], (ushort)(rnd.Next(20) == 0 ? rnd.Next(65536) : rnd.Next(size)));
            BitConverter.TryWriteBytes(ram[((int)AvailBase + 2)..], availIdx);
            BitConverter.TryWriteBytes(ram[(int)AvailBase..], (ushort)rnd.Next(2));
            BitConverter.TryWriteBytes(ram[((int)AvailBase + 4 + 2 * size)..], (ushort)rnd.Next(65536));

            Kick(h, writes, ref recording, ref completions, ref deviceWrites, ram, size, it);
        }
        output.WriteLine($"{kind}: {iterations} iterations in {sw.ElapsedMilliseconds} ms: {completions} completions, " +
            $"{deviceWrites} buffer writes, {resets} resets");
        Assert.True(completions > iterations / 20, "the fuzzer should also produce many valid requests");
    }

    // Indirect tables live in [TableBase, BufferBase) and device-writable buffers in [BufferBase, Ram), so what a
    // device writes can never change the descriptors it (or the checker) reads; readable buffers go anywhere.
    private const ulong TableBase = 0x4000, BufferBase = 0x8000;

    private static ulong RandomAddress(Random rnd, ulong regionStart, ulong regionEnd) => rnd.Next(10) switch
    {
        < 8 => regionStart + (ulong)rnd.Next((int)(regionEnd - regionStart)),
        8 => Ram - (ulong)rnd.Next(64),          // straddles the end of RAM
        _ => (ulong)rnd.NextInt64() * 2,           // anywhere in the 64-bit space
    };

    private static void RandomDescriptor(Span<byte> ram, int at, Random rnd, int tableSize)
    {
        ushort flags = (ushort)((rnd.Next(2) == 0 ? DescFlagNext : 0) | (rnd.Next(2) == 0 ? DescFlagWrite : 0) |
                                (rnd.Next(10) == 0 ? DescFlagIndirect : 0));
        uint len = rnd.Next(20) switch
        {
            < 12 => (uint)rnd.Next(600),
            < 16 => new uint[] { 1, 16, 512, 513 }[rnd.Next(4)],
            < 19 => (uint)rnd.Next(0x4000),
            _ => (uint)rnd.NextInt64(),
        };
        ulong addr;
        if ((flags & DescFlagIndirect) != 0)
        {
            addr = RandomAddress(rnd, TableBase, BufferBase - 0x200);
            if (rnd.Next(2) == 0) len = (uint)(16 * rnd.Next(1, 8));
        }
        else if ((flags & DescFlagWrite) != 0) addr = RandomAddress(rnd, BufferBase, Ram);
        else addr = RandomAddress(rnd, 0, Ram);
        ushort next = rnd.Next(10) == 0 ? (ushort)rnd.Next(65536) : (ushort)rnd.Next(tableSize);
        Put(ram, at, addr, len, flags, next);
    }

    private static void Put(Span<byte> ram, int at, ulong addr, uint len, ushort flags, ushort next)
    {
        BitConverter.TryWriteBytes(ram[at..], addr);
        BitConverter.TryWriteBytes(ram[(at + 8)..], len);
        BitConverter.TryWriteBytes(ram[(at + 12)..], flags);
        BitConverter.TryWriteBytes(ram[(at + 14)..], next);
    }

    /// <summary>
    /// Well-formed chains (header, optional data, status; or all-writable for rng), sometimes through an indirect
    /// table, with an occasional corrupted byte: the requests that reach the device's own parsing.
    /// Returns the heads in order.
    /// </summary>
    private static List<ushort> WellFormed(Span<byte> ram, Random rnd, int size, bool indirectOk)
    {
        var heads = new List<ushort>();
        int nextFree = 0;
        while (nextFree < size && heads.Count < 4)
        {
            int n = Math.Min(rnd.Next(1, 4), size - nextFree);
            bool viaIndirect = indirectOk && rnd.Next(4) == 0;
            ulong table = viaIndirect ? TableBase + (ulong)(0x200 * rnd.Next(0x18)) : DescBase;
            int first = viaIndirect ? 0 : nextFree;
            for (int k = 0; k < n; k++)
            {
                bool last = k == n - 1;
                bool writable = k > 0 && (last || rnd.Next(2) == 0);
                ulong addr = writable ? BufferBase + (ulong)(16 * rnd.Next(0x700)) : DataBase + (ulong)(16 * rnd.Next(0x780));
                uint len = k == 0 ? 16u : last ? (uint)rnd.Next(1, 3) : (uint)(512 * rnd.Next(0, 3) + (rnd.Next(8) == 0 ? 1 : 0));
                if (writable && addr + len > Ram) len = (uint)(Ram - addr);
                Put(ram, (int)table + 16 * (first + k), addr, len,
                    (ushort)((last ? 0 : DescFlagNext) | (writable ? DescFlagWrite : 0)), (ushort)(first + k + 1));
            }
            if (viaIndirect)
            {
                Put(ram, (int)DescBase + 16 * nextFree, table, (uint)(16 * n), DescFlagIndirect, 0);
                heads.Add((ushort)nextFree);
                nextFree++;
            }
            else
            {
                heads.Add((ushort)nextFree);
                nextFree += n;
            }
        }
        // Corrupt length, flags or next (addresses stay in their regions, see above).
        if (rnd.Next(3) == 0) ram[(int)DescBase + 16 * rnd.Next(size) + 8 + rnd.Next(8)] ^= (byte)(1 << rnd.Next(8));
        return heads;
    }

    /// <summary>Plausible virtio-blk headers (and discard segments) all over the data area.</summary>
    private static void FillHeaders(Span<byte> ram, Random rnd)
    {
        uint[] types = [VirtioBlock.TypeIn, VirtioBlock.TypeOut, VirtioBlock.TypeFlush, VirtioBlock.TypeGetId,
                        VirtioBlock.TypeDiscard, VirtioBlock.TypeWriteZeroes, 3, 0xFFFF_FFFF];
        for (int at = (int)DataBase; at + 16 <= (int)Ram; at += 16)
        {
            BitConverter.TryWriteBytes(ram[at..], types[rnd.Next(types.Length)]);
            BitConverter.TryWriteBytes(ram[(at + 4)..], (uint)rnd.Next(2));
            BitConverter.TryWriteBytes(ram[(at + 8)..], rnd.Next(10) == 0 ? (ulong)rnd.NextInt64() : (ulong)rnd.Next(140));
        }
    }

    private static void Kick(VirtioHarness h, List<(ulong Gpa, ulong Len)> writes, ref bool recording, ref int completions,
        ref int deviceWrites, Span<byte> ram, int size, int it)
    {
        ushort usedBefore = h.UsedIdx;
        writes.Clear();
        recording = true;
        h.Kick(0);
        recording = false;
        completions += (ushort)(h.UsedIdx - usedBefore);
        deviceWrites += writes.Count;
        Assert.True((ushort)(h.UsedIdx - usedBefore) <= 5, "more completions than available chains");
        foreach (var (gpa, len) in writes)
            Assert.True(InWritableBuffer(ram, size, gpa, len), $"iteration {it}: device wrote 0x{gpa:x}+{len} outside every writable buffer");
    }

    private static bool InWritableBuffer(ReadOnlySpan<byte> ram, int size, ulong gpa, ulong len)
    {
        for (int i = 0; i < size; i++)
        {
            int d = (int)DescBase + 16 * i;
            if (Covers(ram, d, gpa, len)) return true;
            ushort flags = BitConverter.ToUInt16(ram[(d + 12)..]);
            ulong t = BitConverter.ToUInt64(ram[d..]);
            uint tl = BitConverter.ToUInt32(ram[(d + 8)..]);
            if ((flags & DescFlagIndirect) == 0 || t >= Ram || tl > Ram - t) continue;
            for (ulong k = 0; k + 16 <= tl; k += 16)
                if (Covers(ram, (int)(t + k), gpa, len)) return true;
        }
        return false;
    }

    private static bool Covers(ReadOnlySpan<byte> ram, int d, ulong gpa, ulong len)
    {
        ulong a = BitConverter.ToUInt64(ram[d..]);
        uint l = BitConverter.ToUInt32(ram[(d + 8)..]);
        ushort flags = BitConverter.ToUInt16(ram[(d + 12)..]);
        return (flags & (DescFlagWrite | DescFlagIndirect)) == DescFlagWrite && gpa >= a && gpa + len <= a + l;
    }
}
