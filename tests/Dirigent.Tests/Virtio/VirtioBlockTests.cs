using System.Buffers.Binary;
using Dirigent.Devices.Virtio.Block;
using Dirigent.Tests.Devices.Misc;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Virtio;

public class VirtioBlockTests
{
    private const ulong Header = DataBase, Status = DataBase + 0x80, Buffer = DataBase + 0x1000;

    private static (VirtioHarness H, MemoryDisk Disk, VirtioBlock Blk) Started(bool readOnly = false, bool worker = false, int size = 64 * 1024)
    {
        var disk = new MemoryDisk(size, readOnly);
        var blk = new VirtioBlock(disk, "serial-0123456789abcdefXYZ", worker);
        var h = new VirtioHarness(blk);
        h.Start(Version1 | RingEventIdx | h.DeviceFeatures() & 0xFFFF_FFFF);
        return (h, disk, blk);
    }

    /// <summary>Header, data and status in three descriptors; returns the status byte and the used length.</summary>
    private static (byte Status, uint Len) Request(VirtioHarness h, uint type, ulong sector, int dataLen, bool dataWritable,
        Func<bool>? wait = null)
    {
        ushort used = h.UsedIdx;
        h.Mem.WriteU32(Header, type);
        h.Mem.WriteU32(Header + 4, 0);
        h.Mem.WriteU64(Header + 8, sector);
        h.Mem.WriteU8(Status, 0xEE);
        h.Desc(0, Header, 16, DescFlagNext, 1);
        if (dataLen > 0)
        {
            h.Desc(1, Buffer, (uint)dataLen, (ushort)(DescFlagNext | (dataWritable ? DescFlagWrite : 0)), 2);
            h.Desc(2, Status, 1, DescFlagWrite);
        }
        else h.Desc(1, Status, 1, DescFlagWrite);
        h.Publish(0);
        Assert.True(FakeIrqLine.WaitFor(() => h.UsedIdx != used), "request not completed");
        return (h.Mem.ReadU8(Status), h.Used(used).Len);
    }

    [Fact]
    public void ConfigurationAndFeaturesDescribeTheDisk()
    {
        var (h, _, _) = Started();
        ulong f = h.DeviceFeatures();
        foreach (int bit in new[] { VirtioBlock.FeatureSizeMax, VirtioBlock.FeatureSegMax, VirtioBlock.FeatureBlkSize,
                     VirtioBlock.FeatureFlush, VirtioBlock.FeatureDiscard, VirtioBlock.FeatureWriteZeroes })
            Assert.NotEqual(0UL, f & 1UL << bit);
        Assert.Equal(0UL, f & 1UL << VirtioBlock.FeatureRo);
        Assert.Equal(128u, h.DeviceConfig(0, 4));   // capacity in sectors
        Assert.Equal(0u, h.DeviceConfig(4, 4));
        Assert.Equal(VirtioBlock.SegMax, h.DeviceConfig(0x0C, 4));
        Assert.Equal(512u, h.DeviceConfig(0x14, 4));
        var (ro, _, _) = Started(readOnly: true);
        Assert.NotEqual(0UL, ro.DeviceFeatures() & 1UL << VirtioBlock.FeatureRo);
        Assert.Equal(0UL, ro.DeviceFeatures() & 1UL << VirtioBlock.FeatureDiscard);
    }

    [Fact]
    public void WriteThenReadReturnsTheDataAndFlushReachesTheImage()
    {
        var (h, disk, _) = Started();
        var data = new byte[1024];
        new Random(1).NextBytes(data);
        h.Mem.Write(Buffer, data);
        Assert.Equal((VirtioBlock.StatusOk, 1u), Request(h, VirtioBlock.TypeOut, 3, 1024, false));
        Assert.Equal(data, disk.Data.AsSpan(3 * 512, 1024).ToArray());
        h.Mem.Write(Buffer, new byte[1024]);
        Assert.Equal((VirtioBlock.StatusOk, 1025u), Request(h, VirtioBlock.TypeIn, 3, 1024, true));
        var back = new byte[1024];
        h.Mem.Read(Buffer, back);
        Assert.Equal(data, back);
        Assert.Equal((VirtioBlock.StatusOk, 1u), Request(h, VirtioBlock.TypeFlush, 0, 0, false));
        Assert.Equal(1, disk.Flushes);
    }

    [Fact]
    public void GetIdReturnsTheFirst20BytesOfTheSerial()
    {
        var (h, _, _) = Started();
        Assert.Equal((VirtioBlock.StatusOk, 21u), Request(h, VirtioBlock.TypeGetId, 0, 20, true));
        var id = new byte[20];
        h.Mem.Read(Buffer, id);
        Assert.Equal("serial-0123456789abc", System.Text.Encoding.ASCII.GetString(id));
    }

    [Fact]
    public void BadRangesUnalignedLengthsAndUnknownTypesGetErrorStatus()
    {
        var (h, disk, _) = Started();
        Assert.Equal(VirtioBlock.StatusIoErr, Request(h, VirtioBlock.TypeIn, 127, 1024, true).Status);   // runs past the end
        Assert.Equal(VirtioBlock.StatusIoErr, Request(h, VirtioBlock.TypeOut, ulong.MaxValue / 2, 512, false).Status);
        Assert.Equal(VirtioBlock.StatusIoErr, Request(h, VirtioBlock.TypeIn, 0, 100, true).Status);      // not whole sectors
        Assert.Equal(VirtioBlock.StatusUnsupp, Request(h, 77, 0, 0, false).Status);
        Assert.Equal(VirtioBlock.StatusOk, Request(h, VirtioBlock.TypeIn, 127, 512, true).Status);       // the last sector
        Assert.Equal(0, h.Status & StatusNeedsReset);
        Assert.All(disk.Data, b => Assert.Equal(0, b));
    }

    [Fact]
    public void ReadOnlyDiskRefusesWritesDiscardsAndZeroing()
    {
        var (h, disk, _) = Started(readOnly: true);
        disk.Data[0] = 0x5A;
        h.Mem.Write(Buffer, new byte[512]);
        Assert.Equal(VirtioBlock.StatusIoErr, Request(h, VirtioBlock.TypeOut, 0, 512, false).Status);
        Assert.Equal(VirtioBlock.StatusIoErr, Request(h, VirtioBlock.TypeWriteZeroes, 0, 16, false).Status);
        Assert.Equal(0x5A, disk.Data[0]);
        Assert.Equal(VirtioBlock.StatusOk, Request(h, VirtioBlock.TypeIn, 0, 512, true).Status);
        Assert.Equal(0x5A, h.Mem.ReadU8(Buffer));
    }

    [Fact]
    public void DiscardAndWriteZeroesClearRangesAndRejectBadFlags()
    {
        var (h, disk, _) = Started();
        disk.Data.AsSpan().Fill(0xFF);
        void Segment(ulong sector, uint count, uint flags)
        {
            h.Mem.WriteU64(Buffer, sector);
            h.Mem.WriteU32(Buffer + 8, count);
            h.Mem.WriteU32(Buffer + 12, flags);
        }
        Segment(2, 2, 1);
        Assert.Equal(VirtioBlock.StatusOk, Request(h, VirtioBlock.TypeWriteZeroes, 0, 16, false).Status);
        Assert.Equal(0xFF, disk.Data[1023]);
        Assert.All(disk.Data.AsSpan(1024, 1024).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(0xFF, disk.Data[2048]);
        Assert.Equal(VirtioBlock.StatusUnsupp, Request(h, VirtioBlock.TypeDiscard, 0, 16, false).Status); // unmap on discard
        Segment(10, 1, 0);
        Assert.Equal(VirtioBlock.StatusOk, Request(h, VirtioBlock.TypeDiscard, 0, 16, false).Status);
        Assert.Equal(0, disk.Data[10 * 512]);
        Segment(127, 2, 0);
        Assert.Equal(VirtioBlock.StatusIoErr, Request(h, VirtioBlock.TypeDiscard, 0, 16, false).Status);
        Assert.Equal(0xFF, disk.Data[127 * 512]);
    }

    [Fact]
    public void RequestWithoutStatusByteSetsNeedsReset()
    {
        var (h, _, _) = Started();
        h.Mem.WriteU32(Header, VirtioBlock.TypeIn);
        h.Desc(0, Header, 16, 0);
        h.Publish(0);
        Assert.Equal(0, h.UsedIdx);
        Assert.NotEqual(0, h.Status & StatusNeedsReset);
        Assert.Contains("status byte", h.Dev.NeedsResetReason);
    }

    [Fact]
    public void WorkerThreadCompletesRequestsAndRaisesTheQueueVector()
    {
        var disk = new MemoryDisk(64 * 1024);
        using var blk = new VirtioBlock(disk, "w", useWorkerThread: true);
        using var h = new VirtioHarness(blk);
        h.EnableMsix();
        h.ProgramMsixVector(0, 0x51);
        h.Start(Version1, 16, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(disk.Data.AsSpan(512), 0xC0FFEE);
        Assert.Equal(VirtioBlock.StatusOk, Request(h, VirtioBlock.TypeIn, 1, 512, true).Status);
        Assert.Equal(0xC0FFEEu, h.Mem.ReadU32(Buffer));
        Assert.True(FakeIrqLine.WaitFor(() => h.Sink.MsiCount == 1));
        Assert.Equal(0x51u, h.Sink.Msis[0].Data);
        h.Common(0x14, 1, 0); // reset waits for the worker
        Assert.Equal(0, h.Status);
    }

    /// <summary>
    /// A disk whose WRITE ZEROES requests wait at a gate the test opens: the test knows which request is in progress
    /// when it resets the device, instead of timing slow requests.
    /// </summary>
    private sealed class GatedDisk(MemoryDisk inner) : Dirigent.Storage.IBlockDevice
    {
        public int Started, Zeroed;
        public readonly ManualResetEventSlim FirstStarted = new(), Gate = new();
        public long Size => inner.Size;
        public bool ReadOnly => false;
        public void Read(long offset, Span<byte> buffer) => inner.Read(offset, buffer);
        public void Write(long offset, ReadOnlySpan<byte> data) => inner.Write(offset, data);
        public void Flush() { }
        public void Discard(long offset, long length) => WriteZeroes(offset, length);
        public void WriteZeroes(long offset, long length)
        {
            Interlocked.Increment(ref Started);
            FirstStarted.Set();
            // A hang guard, not a timing: the test opens the gate as soon as the reset has begun.
            if (!Gate.Wait(TimeSpan.FromSeconds(60))) throw new TimeoutException("the test never opened the disk's gate");
            inner.WriteZeroes(offset, length);
            Interlocked.Increment(ref Zeroed);
        }
        public void Dispose() { }
    }

    [Fact]
    public async Task ResetDoesNotWaitForTheWholeQueueOfSlowRequests()
    {
        var guard = TimeSpan.FromSeconds(60);
        var inner = new MemoryDisk(64 * 1024);
        var disk = new GatedDisk(inner);
        using var blk = new VirtioBlock(disk, "s", useWorkerThread: true);
        using var h = new VirtioHarness(blk);
        h.Start(Version1, 16);
        h.Mem.WriteU32(Header, VirtioBlock.TypeWriteZeroes);
        h.Mem.WriteU64(Buffer, 0);
        h.Mem.WriteU32(Buffer + 8, 1);
        h.Mem.WriteU32(Buffer + 12, 0);
        h.Desc(0, Header, 16, DescFlagNext, 1);
        h.Desc(1, Buffer, 16, DescFlagNext, 2);
        h.Desc(2, Status, 1, DescFlagWrite);
        for (int i = 0; i < 12; i++) h.Publish(0, kick: i == 11); // twelve requests, held at the gate one by one
        Assert.True(disk.FirstStarted.Wait(guard), "hang guard: the worker never started the first request");

        // The reset must wait for the request in progress (it holds guest memory), and for that one only.
        var reset = Task.Run(() => h.Common(0x14, 1, 0));
        Assert.True(SpinWait.SpinUntil(() => blk.ResetWaitingForRequest || reset.IsCompleted, guard), "hang guard: the reset never began");
        Assert.False(reset.IsCompleted, "the reset returned while a request was still writing to the disk");
        disk.Gate.Set(); // from here on every request would complete at once: only the reset stops the other eleven
        Assert.True(await Task.WhenAny(reset, Task.Delay(guard)) == reset, "hang guard: the reset never returned");
        await reset;
        Assert.Equal(0, h.Status);
        Assert.Equal(1, Volatile.Read(ref disk.Started));
        Assert.Equal(1, Volatile.Read(ref disk.Zeroed));

        // The device still answers after the reset (a fresh queue, a read), and the old queue stays untouched.
        BinaryPrimitives.WriteUInt32LittleEndian(inner.Data.AsSpan(512), 0xC0FFEE);
        h.Start(Version1, 16);
        Assert.Equal(VirtioBlock.StatusOk, Request(h, VirtioBlock.TypeIn, 1, 512, true).Status);
        Assert.Equal(0xC0FFEEu, h.Mem.ReadU32(Buffer));
        Assert.Equal(1, Volatile.Read(ref disk.Started));
    }
}
