using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dirigent.Api;
using Dirigent.Daemon.Api;
using Dirigent.Daemon.Vms;
using Xunit.Abstractions;

namespace Dirigent.Tests.Fuzz;

/// <summary>
/// Random and mutated request bodies for the daemon's VM create/patch parsing and the per-VM API's body parsing.
/// The only allowed failure is <see cref="ApiRequestException"/> with a 4xx status (the API's 400 answer); anything
/// else would be a 500. What is accepted must also make sense: a created VM read back through the API's view and
/// posted again parses to the same record.
/// </summary>
public sealed class ApiJsonFuzzTests(ITestOutputHelper output)
{
    // Field names the parsers know (so that generated bodies get past the first check and reach the deep ones),
    // plus near misses.
    private static readonly string[] TopFields = ["name", "spec", "limits", "restart", "autostart", "image", "nmae", ""];
    private static readonly string[] SpecFields = ["memory_mib", "vcpus", "kernel", "initrd", "cmdline", "accel", "rng", "disks", "nics", "memory"];
    private static readonly string[] DiskFields = ["disk", "path", "format", "readonly", "bps", "iops", "Path"];
    private static readonly string[] NicFields = ["tap", "user", "hostfwd", "mac", "netns", "bps", "pps"];
    private static readonly string[] LimitFields = ["cpu", "cpu_weight", "memory_mib"];
    private static readonly string[] Strings =
    [
        "", "a", "vm-1", "-bad", "UPPER", new string('x', 63), new string('y', 64), "/abs/path", "rel/path", "emu", "kvm", "auto",
        "qcow2", "raw", "no", "always", "on-failure", "tap0", "tap,0", "tcp:127.0.0.1:2222-:22", "udp::53-:53", "tcp::-1-:22",
        "52:54:00:12:34:56", "a=b", "\0", "\u00e9", "unix:/x.sock", "tcp:[::1]:80", "tcp:host:0", "tcp:h:65536",
    ];

    [Fact]
    public void VmCreateBodies()
    {
        int accepted = 0;
        long n = FuzzBudget.Run(GetType(), output, 20_000, (i, rnd) =>
        {
            byte[] body = Body(rnd, TopObject);
            if (!Outcome(() =>
            {
                using var doc = ApiJson.ParseObject(body)!;
                var rec = VmRequestParser.ParseCreate(doc.RootElement);
                CheckRoundTrip(rec);
            })) return;
            accepted++;
        });
        output.WriteLine($"{accepted} of {n} bodies accepted");
        Assert.True(n < 200 || accepted > 0, "no generated body was ever accepted: the generator reaches nothing deep");
    }

    [Fact]
    public void VmPatchBodies()
    {
        int accepted = 0;
        long n = FuzzBudget.Run(GetType(), output, 20_000, (i, rnd) =>
        {
            byte[] body = Body(rnd, r => PatchObject(r));
            if (!Outcome(() =>
            {
                using var doc = ApiJson.ParseObject(body)!;
                var patch = VmRequestParser.ParsePatch(doc.RootElement);
                // What PatchAsync then does with a stopped VM's record.
                var rec = new VmRecord { Name = "x" };
                if (patch.Spec is { ValueKind: not JsonValueKind.Null } s) VmRequestParser.ApplySpec(s, rec.Spec);
                if (patch.Limits is { ValueKind: not JsonValueKind.Null } l) VmRequestParser.ApplyLimits(l, rec.Limits);
                CheckRecord(rec);
            })) return;
            accepted++;
        });
        output.WriteLine($"{accepted} of {n} bodies accepted");
        Assert.True(n < 200 || accepted > 0, "no generated body was ever accepted");
    }

    /// <summary>The per-VM API: PUT snapshot {"path"}, PUT migrate {"to"}, and the lifecycle PUTs that take no body.</summary>
    [Fact]
    public void VmApiBodies()
    {
        int accepted = 0;
        long n = FuzzBudget.Run(GetType(), output, 20_000, (i, rnd) =>
        {
            byte[] body = Body(rnd, r => r.Next(3) switch
            {
                0 => new JsonObject { [Pick(r, ["path", "to", "x"])] = Value(r, 0) },
                1 => new JsonObject(),
                _ => Value(r, 0),
            });
            int which = rnd.Next(3);
            if (Outcome(() =>
            {
                switch (which)
                {
                    case 0:
                        string path = ApiRequestBody.ParseStrings(body, "{\"path\": ...}", "path")[0];
                        FuzzBudget.Check(path != null, "null path accepted");
                        break;
                    case 1:
                        string to = ApiRequestBody.ParseStrings(body, "{\"to\": ...}", "to")[0];
                        VmApiServer.CheckMigrationTarget(to);
                        FuzzBudget.Check(to.StartsWith("unix:/", StringComparison.Ordinal) || to.StartsWith("tcp:", StringComparison.Ordinal),
                            $"accepted migration target '{to}'");
                        break;
                    default:
                        ApiRequestBody.RequireEmpty(body, "PUT /v1/vm/pause");
                        break;
                }
            })) accepted++;
        });
        output.WriteLine($"{accepted} of {n} bodies accepted");
    }

    /// <summary>Runs a parse; true if it accepted the body, false if it refused it the documented way.</summary>
    private static bool Outcome(Action parse)
    {
        try
        {
            parse();
            return true;
        }
        catch (ApiRequestException e)
        {
            FuzzBudget.Check(e.Status is >= 400 and < 500, $"status {e.Status} for a bad body");
            FuzzBudget.Check(!string.IsNullOrWhiteSpace(e.Message), "400 without a reason");
            return false;
        }
    }

    /// <summary>A create body that was accepted, shown as the API shows it and posted again, must give the same record.</summary>
    private static void CheckRoundTrip(VmRecord rec)
    {
        CheckRecord(rec);
        FuzzBudget.Check(VmRequestParser.IsValidName(rec.Name), $"invalid name '{rec.Name}' accepted");
        var api = rec.ToApi(1);
        foreach (var k in new[] { "state", "exit", "pid", "created_at", "started_at", "revision" }) api.Remove(k);
        string first = api.ToJsonString();
        using var again = JsonDocument.Parse(first);
        var rec2 = VmRequestParser.ParseCreate(again.RootElement);
        string second = rec2.ToApi(1).ToJsonString();
        string firstFull = rec.ToApi(1).ToJsonString();
        FuzzBudget.Check(firstFull == second, $"round trip changed the record:\n{firstFull}\n{second}");
    }

    private static void CheckRecord(VmRecord rec)
    {
        var s = rec.Spec;
        FuzzBudget.Check(s.MemoryMib is >= 1 and <= 1 << 20, $"memory_mib {s.MemoryMib}");
        FuzzBudget.Check(s.Vcpus is >= 1 and <= Dirigent.Vmm.VmSpec.MaxCpus, $"vcpus {s.Vcpus}");
        FuzzBudget.Check(s.Accel is "emu" or "kvm" or "auto", $"accel {s.Accel}");
        FuzzBudget.Check(s.Kernel == null || Path.IsPathFullyQualified(s.Kernel), $"relative kernel '{s.Kernel}'");
        foreach (var d in s.Disks)
        {
            FuzzBudget.Check((d.Disk == null) != (d.Path == null), "disk with both or neither of disk/path");
            FuzzBudget.Check(d.Format is "auto" or "raw" or "qcow2" && d.Bps >= 0 && d.Iops >= 0, "disk fields out of range");
        }
        foreach (var nic in s.Nics) FuzzBudget.Check(nic.User != (nic.Tap != null), "nic with both or neither of tap/user");
        FuzzBudget.Check(rec.Restart is "no" or "on-failure" or "always", $"restart '{rec.Restart}'");
        FuzzBudget.Check(rec.Limits.Cpu is null or (>= 0 and <= 1024) && rec.Limits.CpuWeight is null or (>= 1 and <= 10000),
            "limits out of range");
    }

    // ---------------- generation ----------------

    /// <summary>A generated body: valid JSON most of the time, else that JSON with a few bytes mutated.</summary>
    private static byte[] Body(Random r, Func<Random, JsonNode?> root)
    {
        var node = root(r);
        byte[] bytes = Encoding.UTF8.GetBytes(node?.ToJsonString() ?? "null");
        if (r.Next(4) != 0) return bytes;
        var b = new List<byte>(bytes);
        int edits = r.Next(1, 4);
        for (int k = 0; k < edits; k++)
        {
            int at = b.Count == 0 ? 0 : r.Next(b.Count);
            switch (r.Next(5))
            {
                case 0: if (b.Count > 0) b[at] ^= (byte)(1 << r.Next(8)); break;
                case 1: if (b.Count > 0) b.RemoveAt(at); break;
                case 2: b.Insert(at, Specials[r.Next(Specials.Length)]); break;
                case 3: b.RemoveRange(at, b.Count - at); break;          // truncated
                default: b.InsertRange(at, b.GetRange(0, Math.Min(b.Count, r.Next(40)))); break; // duplicated piece
            }
        }
        return b.ToArray();
    }

    private static readonly byte[] Specials = "{}[]\",:0-e.\\ tfn\u0001"u8.ToArray().Append((byte)0xFF).Append((byte)0xC3).ToArray();

    private static string Pick(Random r, string[] a) => a[r.Next(a.Length)];
    private static JsonNode? PickNode(Random r, JsonNode?[] a) => a[r.Next(a.Length)];

    private static JsonObject TopObject(Random r)
    {
        var o = new JsonObject();
        if (r.Next(8) != 0) o["name"] = r.Next(4) == 0 ? Value(r, 2) : Pick(r, ["vm-1", "a", "web-2", "x9", "Bad", ""]);
        foreach (var f in Subset(r, TopFields))
            if (f != "name") o[f] = FieldValue(r, f);
        return o;
    }

    private static JsonObject PatchObject(Random r)
    {
        var o = new JsonObject();
        foreach (var f in Subset(r, ["spec", "limits", "restart", "autostart", "name"])) o[f] = FieldValue(r, f);
        return o;
    }

    private static IEnumerable<string> Subset(Random r, string[] fields) =>
        fields.Where(_ => r.Next(3) == 0).Distinct();

    private static JsonNode? FieldValue(Random r, string field)
    {
        if (r.Next(10) == 0) return Value(r, 2); // wrong type now and then
        switch (field)
        {
            case "spec":
                var s = new JsonObject();
                foreach (var f in Subset(r, SpecFields)) s[f] = SpecValue(r, f);
                return s;
            case "limits":
                var l = new JsonObject();
                foreach (var f in Subset(r, LimitFields))
                    l[f] = r.Next(4) == 0 ? null : f == "cpu" ? JsonValue.Create(r.NextDouble() * 2000 - 100) : JsonValue.Create(r.Next(-5, 20000));
                return l;
            case "restart": return Pick(r, ["no", "always", "on-failure", "sometimes"]);
            case "autostart": return r.Next(2) == 0;
            case "image": return r.Next(3) == 0 ? null : Pick(r, ["debian", "x", "Bad Name"]);
            default: return Value(r, 1);
        }
    }

    private static JsonNode? SpecValue(Random r, string f)
    {
        switch (f)
        {
            case "memory_mib": return PickNode(r, new JsonNode?[] { 0, 1, 512, 1 << 20, (1 << 20) + 1, -1, 1.5, long.MaxValue, "512" });
            case "vcpus": return r.Next(-2, 300);
            case "kernel": return r.Next(3) == 0 ? null : Pick(r, ["/boot/vmlinuz", "vmlinuz", ""]);
            case "initrd": return r.Next(4) == 0 ? null : new JsonArray(Enumerable.Range(0, r.Next(3)).Select(_ => (JsonNode?)Pick(r, ["/i.cpio", "i.cpio"])).ToArray());
            case "accel": return Pick(r, ["emu", "kvm", "auto", "hvf"]);
            case "rng": return r.Next(2) == 0;
            case "disks":
                return r.Next(5) == 0 ? null : new JsonArray(Enumerable.Range(0, r.Next(3)).Select(_ =>
                {
                    var d = new JsonObject();
                    foreach (var k in Subset(r, DiskFields))
                        d[k] = k switch
                        {
                            "disk" => Pick(r, ["data", "Data", ""]),
                            "path" => Pick(r, ["/d.qcow2", "d.img", "/a,b=c"]),
                            "format" => Pick(r, ["auto", "raw", "qcow2", "vmdk"]),
                            "readonly" => r.Next(2) == 0,
                            "bps" or "iops" => r.Next(3) == 0 ? -1 : r.NextInt64(),
                            _ => Value(r, 1),
                        };
                    return (JsonNode?)d;
                }).ToArray());
            case "nics":
                return r.Next(5) == 0 ? null : new JsonArray(Enumerable.Range(0, r.Next(3)).Select(_ =>
                {
                    var n = new JsonObject();
                    foreach (var k in Subset(r, NicFields))
                        n[k] = k switch
                        {
                            "tap" => Pick(r, ["tap0", "t,ap", "", "averyveryverylongname"]),
                            "user" => r.Next(2) == 0,
                            "hostfwd" => new JsonArray(Enumerable.Range(0, r.Next(3)).Select(_ => (JsonNode?)Pick(r, Strings)).ToArray()),
                            "mac" or "netns" => r.Next(3) == 0 ? null : Pick(r, Strings),
                            _ => r.Next(3) == 0 ? -5 : r.Next(),
                        };
                    return (JsonNode?)n;
                }).ToArray());
            default: return Value(r, 1);
        }
    }

    /// <summary>Any JSON value, nesting up to <paramref name="depth"/> more levels.</summary>
    private static JsonNode? Value(Random r, int depth)
    {
        switch (r.Next(depth > 0 ? 9 : 7))
        {
            case 0: return null;
            case 1: return r.Next(2) == 0;
            case 2: return r.Next(int.MinValue, int.MaxValue);
            case 3: return r.NextDouble() * Math.Pow(10, r.Next(-5, 30));
            case 4: return r.Next(3) == 0 ? RandomString(r) : Pick(r, Strings);
            case 5: return long.MaxValue;
            case 6: return Pick(r, Strings);
            case 7: return new JsonArray(Enumerable.Range(0, r.Next(4)).Select(_ => Value(r, depth - 1)).ToArray());
            default:
                var o = new JsonObject();
                for (int k = r.Next(4); k > 0; k--) o[Pick(r, Strings) + k] = Value(r, depth - 1);
                return o;
        }
    }

    private static string RandomString(Random r)
    {
        var sb = new StringBuilder();
        for (int k = r.Next(20); k > 0; k--) sb.Append((char)(r.Next(3) == 0 ? r.Next(0x20, 0x3000) : r.Next(0x20, 0x7F)));
        return sb.ToString();
    }
}
