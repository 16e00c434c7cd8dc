using System.Net;
using System.Text.Json;
using Dirigent.Devices.Virtio.Block;
using Dirigent.Tests.Devices.Misc;
using Dirigent.Tests.Virtio;
using static Dirigent.Devices.Virtio.VirtioConstants;
using static Dirigent.Tests.Virtio.VirtioHarness;

namespace Dirigent.Tests.Api;

/// <summary>GET /v1/vm/metrics, and the device counters behind it.</summary>
public class VmMetricsTests
{
    private static async Task<JsonElement> Metrics(ApiTestVm t)
    {
        using var r = await t.Http.GetAsync("/v1/vm/metrics");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("application/json", r.Content.Headers.ContentType?.MediaType);
        using var doc = JsonDocument.Parse(await r.Content.ReadAsByteArrayAsync());
        return doc.RootElement.Clone();
    }

    [Fact]
    public async Task MetricsReportStateTimeInstructionsDevicesAndMemory()
    {
        await using var t = await ApiTestVm.StartAsync(cpus: 2, disks: [64 * 1024, 128 * 1024]);
        var m = await Metrics(t);
        Assert.Equal("running", m.GetProperty("state").GetString());
        Assert.True(m.GetProperty("uptime_s").GetDouble() >= 0);
        Assert.Equal(16L << 20, m.GetProperty("memory_bytes").GetInt64());
        var vcpus = m.GetProperty("vcpus").EnumerateArray().ToArray();
        Assert.Equal([0, 1], vcpus.Select(v => v.GetProperty("index").GetInt32()));
        // The guest has printed its ready line on vCPU 0; vCPU 1 still waits for a SIPI and has run nothing.
        ulong i0 = vcpus[0].GetProperty("instructions").GetUInt64();
        Assert.True(i0 > 100, $"vCPU 0 retired {i0} instructions");
        Assert.Equal(0UL, vcpus[1].GetProperty("instructions").GetUInt64());
        Assert.Equal(i0, m.GetProperty("instructions_retired").GetUInt64());
        var disks = m.GetProperty("disks").EnumerateArray().ToArray();
        Assert.Equal([0, 1], disks.Select(d => d.GetProperty("index").GetInt32()));
        foreach (var d in disks)
            foreach (string f in new[] { "read_bytes", "write_bytes", "read_ops", "write_ops" })
                Assert.Equal(0, d.GetProperty(f).GetInt64()); // the tiny guest has no disk driver
        Assert.Empty(m.GetProperty("nics").EnumerateArray());
        Assert.False(m.TryGetProperty("kvm_exits", out _));
        Assert.Equal(["state", "uptime_s", "vcpus", "instructions_retired", "disks", "nics", "memory_bytes"],
            m.EnumerateObject().Select(p => p.Name));

        // Paused: VM time and the instruction counts stand still, and metrics still answer.
        (await t.Put("/v1/vm/pause")).EnsureSuccessStatusCode();
        var p1 = await Metrics(t);
        var p2 = await Metrics(t);
        Assert.Equal("paused", p1.GetProperty("state").GetString());
        Assert.Equal(p1.GetProperty("instructions_retired").GetUInt64(), p2.GetProperty("instructions_retired").GetUInt64());
        Assert.Equal(p1.GetProperty("uptime_s").GetDouble(), p2.GetProperty("uptime_s").GetDouble());
        Assert.True(p1.GetProperty("instructions_retired").GetUInt64() >= i0);

        // Ended (the worker serves its API until it exits): the final counts.
        (await t.Put("/v1/vm/stop")).EnsureSuccessStatusCode();
        Assert.Equal("stopped", (await Metrics(t)).GetProperty("state").GetString());
    }

    [Fact]
    public async Task MetricsTakeGetOnly()
    {
        await using var t = await ApiTestVm.StartAsync();
        using var r = await t.Put("/v1/vm/metrics");
        await ApiTestVm.AssertProblem(r, HttpStatusCode.MethodNotAllowed);
        Assert.Equal("GET", r.Content.Headers.Allow.Single());
    }

    [Fact]
    public void BlockCountersCountCompletedReadsAndWritesOncePerRequest()
    {
        const ulong header = DataBase, status = DataBase + 0x80, buffer = DataBase + 0x1000;
        var disk = new MemoryDisk(64 * 1024);
        var blk = new VirtioBlock(disk, "m", useWorkerThread: false);
        var h = new VirtioHarness(blk);
        h.Start(Version1 | RingEventIdx | h.DeviceFeatures() & 0xFFFF_FFFF);
        byte Request(uint type, ulong sector, int len, bool writable)
        {
            ushort used = h.UsedIdx;
            h.Mem.WriteU32(header, type);
            h.Mem.WriteU32(header + 4, 0);
            h.Mem.WriteU64(header + 8, sector);
            h.Desc(0, header, 16, DescFlagNext, 1);
            if (len > 0)
            {
                h.Desc(1, buffer, (uint)len, (ushort)(DescFlagNext | (writable ? DescFlagWrite : 0)), 2);
                h.Desc(2, status, 1, DescFlagWrite);
            }
            else h.Desc(1, status, 1, DescFlagWrite);
            h.Publish(0);
            Assert.True(FakeIrqLine.WaitFor(() => h.UsedIdx != used), "request not completed");
            return h.Mem.ReadU8(status);
        }
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeOut, 0, 4096, false));
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeOut, 8, 512, false));
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeIn, 0, 1024, true));
        Assert.Equal(VirtioBlock.StatusOk, Request(VirtioBlock.TypeFlush, 0, 0, false));
        // Past the end of the disk: failed, so not counted.
        Assert.Equal(VirtioBlock.StatusIoErr, Request(VirtioBlock.TypeIn, 1 << 20, 512, true));
        Assert.Equal(new BlockCounters(ReadBytes: 1024, WriteBytes: 4608, ReadOps: 1, WriteOps: 2), blk.Counters);
    }
}
