using System.Net;
using System.Text.Json;

namespace Dirigent.Tests.Api;

/// <summary>PUT /v1/vm/trace, PUT /v1/vm/memory-dump and GET /v1/vm/processes on the API's tiny test guest.</summary>
public class IntrospectionApiTests
{
    [Fact]
    public async Task TraceStartsStopsAndRefusesBadRequests()
    {
        await using var t = await ApiTestVm.StartAsync();
        string output = Path.Combine(t.Dir, "trace.jsonl");
        Assert.Contains("output", await ApiTestVm.AssertProblem(await t.Put("/v1/vm/trace", "{\"action\":\"start\"}"), HttpStatusCode.BadRequest));
        await ApiTestVm.AssertProblem(await t.Put("/v1/vm/trace", "{\"action\":\"start\",\"output\":\"rel.jsonl\"}"), HttpStatusCode.BadRequest);
        await ApiTestVm.AssertProblem(await t.Put("/v1/vm/trace", "{\"action\":\"go\"}"), HttpStatusCode.BadRequest);
        await ApiTestVm.AssertProblem(await t.Put("/v1/vm/trace", "{\"action\":\"start\",\"output\":\"/x\",\"pid\":\"1\"}"), HttpStatusCode.BadRequest);
        string badMap = Path.Combine(t.Dir, "System.map");
        File.WriteAllText(badMap, "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n");
        string why = await ApiTestVm.AssertProblem(await t.Put("/v1/vm/trace", $"{{\"action\":\"start\",\"output\":\"{output}\",\"system_map\":\"{badMap}\"}}"), HttpStatusCode.BadRequest);
        Assert.Contains("no kernel symbols", why);

        Assert.Equal(HttpStatusCode.NoContent, (await t.Put("/v1/vm/trace", $"{{\"action\":\"start\",\"output\":\"{output}\"}}")).StatusCode);
        Assert.True(t.Vm.Introspection.Tracing);
        await ApiTestVm.AssertProblem(await t.Put("/v1/vm/trace", $"{{\"action\":\"start\",\"output\":\"{output}\"}}"), HttpStatusCode.Conflict);
        using var r = await t.Put("/v1/vm/trace", "{\"action\":\"stop\"}");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        using var doc = JsonDocument.Parse(await r.Content.ReadAsStringAsync());
        Assert.Equal(0, doc.RootElement.GetProperty("events").GetInt64()); // the test guest makes no system calls
        Assert.False(t.Vm.Introspection.Tracing);
        Assert.True(File.Exists(output));

        // No System.map: no process list.
        await ApiTestVm.AssertProblem(await t.Send(HttpMethod.Get, "/v1/vm/processes"), HttpStatusCode.BadRequest);
    }

    [Fact]
    public async Task MemoryDumpWritesRawAndElfImagesOfGuestRam()
    {
        await using var t = await ApiTestVm.StartAsync();
        string raw = Path.Combine(t.Dir, "mem.raw"), elf = Path.Combine(t.Dir, "mem.elf");
        Assert.Equal(HttpStatusCode.NoContent, (await t.Put("/v1/vm/memory-dump", $"{{\"path\":\"{raw}\"}}")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await t.Put("/v1/vm/memory-dump", $"{{\"path\":\"{elf}\",\"format\":\"elf\"}}")).StatusCode);
        Assert.Equal("running", (await t.GetVm()).GetProperty("state").GetString()); // paused for the copy only
        Assert.Equal(16L << 20, new FileInfo(raw).Length);
        byte[] e = File.ReadAllBytes(elf);
        Assert.Equal("\u007fELF"u8.ToArray(), e[..4]);
        Assert.Equal((ushort)4, BitConverter.ToUInt16(e, 16));  // ET_CORE
        Assert.Equal((ushort)62, BitConverter.ToUInt16(e, 18)); // EM_X86_64
        Assert.Equal((ushort)1, BitConverter.ToUInt16(e, 56));  // one PT_LOAD: 16 MiB of RAM below the PCI hole
        ulong off = BitConverter.ToUInt64(e, 64 + 8), size = BitConverter.ToUInt64(e, 64 + 32);
        Assert.Equal(16UL << 20, size);
        // The segment holds guest RAM as it is: the same bytes as the raw image (its low 1 MiB, where the guest code lives).
        Assert.Equal(File.ReadAllBytes(raw).AsSpan(0, 1 << 20).ToArray(), e.AsSpan((int)off, 1 << 20).ToArray());
        await ApiTestVm.AssertProblem(await t.Put("/v1/vm/memory-dump", $"{{\"path\":\"{raw}\",\"format\":\"zip\"}}"), HttpStatusCode.BadRequest);
        await ApiTestVm.AssertProblem(await t.Put("/v1/vm/memory-dump", "{\"path\":\"mem.raw\"}"), HttpStatusCode.BadRequest);
        await ApiTestVm.AssertProblem(await t.Put("/v1/vm/memory-dump", $"{{\"path\":\"{t.Dir}/no/such/dir/m\"}}"), HttpStatusCode.BadRequest);
    }
}
