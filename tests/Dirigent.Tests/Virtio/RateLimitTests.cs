using System.Diagnostics;
using Dirigent.Devices.Net;
using Dirigent.Devices.Virtio;
using Dirigent.Devices.Virtio.Block;
using Dirigent.Devices.Virtio.Net;
using Dirigent.Machine.Memory;
using Dirigent.Tests.Devices.Misc;
using Dirigent.Vmm;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Virtio;

/// <summary>
/// Rate limits (token buckets in VM time): the bucket's arithmetic on a hand-advanced clock, virtio-blk and
/// virtio-net holding requests back until the refill moment, and the --disk/--net options.
/// </summary>
public sealed class RateLimitTests
{
    private const long Ms = 1_000_000;
    private static int _resumes;

    private static RateLimiter Limiter(ManualClock clock, TokenBucketConfig? bytes, TokenBucketConfig? ops) =>
        new(new RateLimitConfig(bytes, ops), clock, () => Interlocked.Increment(ref _resumes));

    [Fact]
    public void BucketStartsFullRefillsAtItsRateAndNeverBeyondItsSize()
    {
        var clock = new ManualClock();
        var l = Limiter(clock, new TokenBucketConfig(1000, 1000), null);
        Assert.True(l.TryConsume(1000, 1, out _));
        Assert.False(l.TryConsume(1, 1, out long ready));
        Assert.Equal(clock.NowNs + 1 * Ms, ready);              // one byte a millisecond
        clock.SkipNs(Ms / 2);
        Assert.False(l.TryConsume(1, 1, out ready));
        Assert.Equal(clock.NowNs + Ms / 2, ready);              // the half token earned is not lost
        clock.SkipNs(Ms / 2);
        Assert.True(l.TryConsume(1, 1, out _));
        // Many small refills add up exactly: 1000 steps of 1 µs are one token.
        for (int k = 0; k < 1000; k++) { clock.SkipNs(1000); Assert.False(l.TryConsume(2, 1, out _)); }
        Assert.True(l.TryConsume(1, 1, out _));
        // A long idle fills the bucket only up to its size.
        clock.SkipNs(3600 * 1000 * Ms);
        Assert.True(l.TryConsume(1000, 1, out _));
        Assert.False(l.TryConsume(1, 1, out _));
    }

    [Fact]
    public void OneTimeBurstIsSpentFirstAndNeverRefilled()
    {
        var clock = new ManualClock();
        var l = Limiter(clock, new TokenBucketConfig(100, 100, OneTimeBurst: 500), null);
        Assert.True(l.TryConsume(550, 1, out _));
        Assert.True(l.TryConsume(50, 1, out _));
        Assert.False(l.TryConsume(1, 1, out _));
        clock.SkipNs(10_000 * Ms);
        Assert.True(l.TryConsume(100, 1, out _));
        Assert.False(l.TryConsume(1, 1, out _));
    }

    [Fact]
    public void RequestLargerThanTheBucketGoesWhenItIsFullAndLeavesADebt()
    {
        var clock = new ManualClock();
        var l = Limiter(clock, new TokenBucketConfig(100, 100), null);
        Assert.True(l.TryConsume(40, 1, out _));
        Assert.False(l.TryConsume(250, 1, out long ready));     // waits for a full bucket, not for 250 tokens
        Assert.Equal(clock.NowNs + 400 * Ms, ready);
        clock.SkipNs(400 * Ms);
        Assert.True(l.TryConsume(250, 1, out _));
        // 150 tokens owed, then one more: 1.51 s, so the long-run rate holds.
        Assert.False(l.TryConsume(1, 1, out ready));
        Assert.Equal(clock.NowNs + 1510 * Ms, ready);
    }

    [Fact]
    public void BytesAndOpsBothLimitAndARefusedRequestTakesNothing()
    {
        var clock = new ManualClock();
        var l = Limiter(clock, new TokenBucketConfig(1 << 20, 1 << 20), new TokenBucketConfig(10, 10));
        for (int k = 0; k < 10; k++) Assert.True(l.TryConsume(100, 1, out _));
        Assert.False(l.TryConsume(100, 1, out long ready));    // ops run out first
        Assert.Equal(clock.NowNs + 100 * Ms, ready);
        clock.SkipNs(1000 * Ms);                               // both full again
        Assert.True(l.TryConsume(1000, 1, out _));
        Assert.False(l.TryConsume(2 << 20, 1, out ready));     // now bytes: oversize, and the bucket is not full
        Assert.Equal(clock.NowNs + (1000L * 1_000_000_000 + (1 << 20) - 1) / (1 << 20), ready);
        clock.SkipNs(ready - clock.NowNs);
        Assert.True(l.TryConsume(1 << 20, 9, out _));          // the refused request took no op and no byte
        Assert.False(l.TryConsume(0, 1, out _));
        Assert.True(l.TryConsume(0, 0, out _));
    }

    [Fact]
    public void RefusalsArmOneTimerThatResumesTheDeviceAtTheRefillMoment()
    {
        var clock = new ManualClock();
        int resumes = 0;
        var l = new RateLimiter(new RateLimitConfig(null, new TokenBucketConfig(1, 10)), clock, () => resumes++);
        Assert.True(l.TryConsume(0, 1, out _));
        Assert.False(l.TryConsume(0, 1, out _));
        Assert.False(l.TryConsume(0, 1, out _));
        Assert.Equal(1, clock.PendingTimers);
        Assert.True(l.Throttled);
        clock.AdvanceNs(100 * Ms - 1);
        Assert.Equal(0, resumes);
        clock.AdvanceNs(1);
        Assert.Equal(1, resumes);
        Assert.False(l.Throttled);
        Assert.True(l.TryConsume(0, 1, out _));
        Assert.Equal(0, clock.PendingTimers);
    }

    // ---- virtio-blk ----------------------------------------------------------------------------------------------

    private const ushort Chains = 32;

    /// <summary>Makes FLUSH requests 0..n-1 (chain k: descriptors 2k, 2k+1) available, each with its kick.</summary>
    private static void PublishFlushes(VirtioHarness h, int n)
    {
        for (int k = 0; k < n; k++)
        {
            ulong hdr = DataBase + 0x100UL * (ulong)k;
            h.Mem.WriteU32(hdr, VirtioBlock.TypeFlush);
            h.Mem.WriteU64(hdr + 8, 0);
            h.Mem.WriteU8(hdr + 0x80, 0xEE);
            h.Desc(2 * k, hdr, 16, DescFlagNext, (ushort)(2 * k + 1));
            h.Desc(2 * k + 1, hdr + 0x80, 1, DescFlagWrite);
            h.Publish((ushort)(2 * k));
        }
    }

    [Fact]
    public void VirtioBlockWithIops100CompletesABurstAtOneRequestPer10MsOfVmTime()
    {
        var clock = new ManualClock();
        var disk = new MemoryDisk(64 * 1024);
        var blk = new VirtioBlock(disk, "rl", useWorkerThread: false);
        var limit = VmSpec.ParseDisk("d.img,iops=100").ToRateLimit();
        blk.SetRateLimit(limit, clock);
        using var h = new VirtioHarness(blk);
        h.Start(Version1 | h.DeviceFeatures() & 0xFFFF_FFFF, queueSize: 2 * Chains);
        long t0 = clock.NowNs;
        // The one-second burst: 96 requests go at once, in three rounds.
        for (int round = 0; round < 3; round++) PublishFlushes(h, Chains);
        Assert.Equal(96, h.UsedIdx);
        // The next round: 4 tokens left, the other 28 requests wait in the ring (one timer, nothing spins).
        PublishFlushes(h, Chains);
        Assert.Equal(100, h.UsedIdx);
        Assert.Equal(1, clock.PendingTimers);
        Assert.Equal(28, (ushort)(h.Mem.ReadU16(AvailBase + 2) - h.UsedIdx));
        for (int k = 1; k <= 28; k++)
        {
            clock.AdvanceNs(10 * Ms - 1);
            Assert.Equal(99 + k, h.UsedIdx);                    // not a nanosecond early
            clock.AdvanceNs(1);
            Assert.Equal(100 + k, h.UsedIdx);
        }
        Assert.Equal(280 * Ms, clock.NowNs - t0);
        Assert.Equal(0, clock.PendingTimers);
        // In order, each exactly once, every one OK.
        for (int i = 0; i < 128; i++) Assert.Equal((uint)(2 * (i % Chains)), h.Used(i).Id);
        for (int k = 0; k < Chains; k++) Assert.Equal(VirtioBlock.StatusOk, h.Mem.ReadU8(DataBase + 0x100UL * (ulong)k + 0x80));
        Assert.Equal(128, blk.RequestsCompleted);
        Assert.Equal(4 * Chains, disk.Flushes);
    }

    [Fact]
    public void VirtioBlockBandwidthLimitCountsTheDataBytes()
    {
        var clock = new ManualClock();
        var disk = new MemoryDisk(64 * 1024);
        var blk = new VirtioBlock(disk, "rl", useWorkerThread: false);
        blk.SetRateLimit(VmSpec.ParseDisk("d.img,bps=4K").ToRateLimit(), clock);
        using var h = new VirtioHarness(blk);
        h.Start(Version1 | h.DeviceFeatures() & 0xFFFF_FFFF);
        // Three 2 KiB writes: two fill the one-second burst, the third waits half a second for its 2048 bytes.
        for (int k = 0; k < 3; k++)
        {
            ulong hdr = DataBase + 0x100UL * (ulong)k;
            h.Mem.WriteU32(hdr, VirtioBlock.TypeOut);
            h.Mem.WriteU64(hdr + 8, (ulong)(4 * k));
            h.Desc(3 * k, hdr, 16, DescFlagNext, (ushort)(3 * k + 1));
            h.Desc(3 * k + 1, DataBase + 0x1000, 2048, DescFlagNext, (ushort)(3 * k + 2));
            h.Desc(3 * k + 2, hdr + 0x80, 1, DescFlagWrite);
            h.Publish((ushort)(3 * k));
        }
        Assert.Equal(2, h.UsedIdx);
        clock.AdvanceNs(500 * Ms - 1);
        Assert.Equal(2, h.UsedIdx);
        clock.AdvanceNs(1);
        Assert.Equal(3, h.UsedIdx);
    }

    // ---- virtio-net ----------------------------------------------------------------------------------------------

    [Fact]
    public void VirtioNetTransmitAndReceiveWaitForTokensInOrderAndDropNothing()
    {
        using var mem = new GuestMemory(4UL << 20);
        var clock = new ManualClock();
        var backend = new FakeBackend();
        var net = new VirtioNet(backend, [0x52, 0x54, 0, 1, 2, 3]);
        net.SetRateLimit(new RateLimitConfig(null, new TokenBucketConfig(2, 10)), clock); // 2 packets, then one per 100 ms
        var transport = new FakeTransport(mem, 2) { NegotiatedFeatures = VirtioNet.Mac | Version1 };
        var rx = new DriverQueue(mem, transport.Queue(0), 0x10000, 0x100000);
        var tx = new DriverQueue(mem, transport.Queue(1), 0x20000, 0x200000);
        rx.Enable(transport.NegotiatedFeatures);
        tx.Enable(transport.NegotiatedFeatures);
        net.Activate(transport);

        for (int k = 0; k < 4; k++)
        {
            var frame = new byte[60];
            frame[0] = (byte)k;
            tx.AddChain((new byte[12], false), (frame, false));
        }
        net.QueueNotify(VirtioNet.TransmitQueue);
        Assert.Equal(2, backend.Sent.Count);
        Assert.Equal(2, tx.Used.Count);
        clock.AdvanceNs(100 * Ms);
        Assert.Equal(3, backend.Sent.Count);
        clock.AdvanceNs(100 * Ms);
        Assert.Equal(new[] { 0, 1, 2, 3 }, backend.Sent.Select(p => (int)p[12]));
        Assert.Equal(4, net.TxPackets);
        Assert.Equal(0, net.TxDropped);

        // Receive: the third packet is refused (the backend holds it) until the timer asks for it again.
        for (int k = 0; k < 4; k++) rx.AddWritable(1536);
        var packet = new byte[12 + 60];
        Assert.True(backend.Receiver!.TryReceive(packet));
        Assert.True(backend.Receiver.TryReceive(packet));
        int ready = backend.ReadyCalls;
        Assert.False(backend.Receiver.TryReceive(packet));
        Assert.False(backend.Receiver.TryReceive(packet));
        Assert.Equal(2, rx.Used.Count);
        clock.AdvanceNs(100 * Ms);
        Assert.Equal(ready + 1, backend.ReadyCalls);
        Assert.True(backend.Receiver.TryReceive(packet));
        Assert.Equal(3, rx.Used.Count);
        Assert.Equal(3, net.RxPackets);
        Assert.Equal(0, net.RxDropped);
    }

    // ---- options -------------------------------------------------------------------------------------------------

    [Fact]
    public void DiskAndNetOptionsParseRatesWithSuffixes()
    {
        var d = VmSpec.ParseDisk("a.img,readonly,bps=50M,iops=2k");
        Assert.Equal(new DiskConfig("a.img", DiskFormat.Auto, true, 50L << 20, 2048), d);
        var l = d.ToRateLimit()!;
        Assert.Equal(new TokenBucketConfig(50L << 20, 50L << 20), l.Bandwidth);
        Assert.Equal(new TokenBucketConfig(2048, 2048), l.Ops);
        Assert.Null(VmSpec.ParseDisk("a.img").ToRateLimit());
        Assert.Null(VmSpec.ParseDisk("a.img,iops=100").ToRateLimit()!.Bandwidth);
        var n = NicConfig.Parse("tap=t0,bps=1G,pps=1000", 0);
        Assert.Equal(1L << 30, n.BytesPerSecond);
        Assert.Equal(1000, n.PacketsPerSecond);
        Assert.Equal(new TokenBucketConfig(1000, 1000), n.ToRateLimit()!.Ops);
        Assert.Null(NicConfig.Parse("tap=t0", 0).ToRateLimit());
    }

    [Theory]
    [InlineData("--disk", "x.img,iops=0")]
    [InlineData("--disk", "x.img,bps=-5")]
    [InlineData("--disk", "x.img,bps=10X")]
    [InlineData("--disk", "x.img,iops=")]
    [InlineData("--disk", "x.img,bps=99999999999999999999")]
    [InlineData("--net", "tap=t0,pps=1.5")]
    [InlineData("--net", "tap=t0,bps=M")]
    public void BadRatesAreOneLineErrors(string option, string spec)
    {
        var e = Assert.Throws<FormatException>(() =>
        {
            if (option == "--disk") VmSpec.ParseDisk(spec);
            else NicConfig.Parse(spec, 0);
        });
        Assert.Contains("is not a positive rate", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("--disk", "x.img,iops=fast")]
    [InlineData("--net", "tap=t0,pps=0")]
    public void RunWithABadRateExitsWithStatus2AndOneLine(string option, string spec)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dirigent.dll"));
        foreach (var a in new[] { "run", "--accel", "emu", option, spec }) psi.ArgumentList.Add(a);
        var err = new System.Text.StringBuilder();
        using var p = Process.Start(psi)!;
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (err) err.Append(e.Data).Append('\n'); };
        p.OutputDataReceived += (_, _) => { };
        p.BeginErrorReadLine();
        p.BeginOutputReadLine();
        if (!p.WaitForExit(TimeSpan.FromSeconds(60))) { p.Kill(); Assert.Fail("dirigent run did not exit"); }
        p.WaitForExit(); // the redirected streams are drained
        Assert.Equal(ExitCodes.BadInput, p.ExitCode);
        string text;
        lock (err) text = err.ToString();
        Assert.Matches($@"^dirigent run: {option} .*is not a positive rate[^\n]*\n$", text);
    }
}

public sealed class RateLimitSpecTests
{
    [Fact]
    public void LimitsSurviveTheSnapshotManifestAndOldManifestsHaveNone()
    {
        var spec = new VmSpec
        {
            Disks = [VmSpec.ParseDisk("a.img,bps=1M,iops=100")],
            Nics = [NicConfig.Parse("tap=t0,pps=500", 0)],
        };
        string json = System.Text.Json.JsonSerializer.Serialize(new Dirigent.Vmm.Snapshots.SnapshotManifest { Spec = spec }, Dirigent.Vmm.Snapshots.SnapshotFiles.Json);
        var back = System.Text.Json.JsonSerializer.Deserialize<Dirigent.Vmm.Snapshots.SnapshotManifest>(json, Dirigent.Vmm.Snapshots.SnapshotFiles.Json)!.Spec;
        Assert.Equal(spec.Disks[0], back.Disks[0]);
        Assert.Equal(500, back.Nics[0].PacketsPerSecond);
        // A manifest written before the options existed.
        var node = System.Text.Json.Nodes.JsonNode.Parse(json)!;
        foreach (var (parent, list) in new[] { ("disks", new[] { "bytesPerSecond", "opsPerSecond" }), ("nics", new[] { "bytesPerSecond", "packetsPerSecond" }) })
        {
            var item = node["spec"]![parent]![0]!.AsObject();
            foreach (var name in list) Assert.True(item.Remove(name), $"{parent}.{name} not in the manifest");
        }
        string old = node.ToJsonString();
        var oldSpec = System.Text.Json.JsonSerializer.Deserialize<Dirigent.Vmm.Snapshots.SnapshotManifest>(old, Dirigent.Vmm.Snapshots.SnapshotFiles.Json)!.Spec;
        Assert.Null(oldSpec.Disks[0].ToRateLimit());
        Assert.Null(oldSpec.Nics[0].ToRateLimit());
    }
}
