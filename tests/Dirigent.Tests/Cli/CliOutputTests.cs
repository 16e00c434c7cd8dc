using System.Text;
using System.Text.Json.Nodes;
using Dirigent.Cli.Client;

namespace Dirigent.Tests.Cli;

/// <summary>The daemon CLI's renderings (table, key/value, YAML), its SSE reader and its console escape.</summary>
public class CliOutputTests
{
    private static readonly JsonObject Web = JsonNode.Parse("""
        {"name":"web","state":"crashed","spec":{"memory_mib":2048,"vcpus":2,"kernel":null,"initrd":[],"disks":[{"disk":"d1"},{"path":"/x.img","readonly":true}]},
         "limits":{"cpu":0.5},"pid":null,"exit":{"kind":"triple_fault","detail":"triple fault at rip 0x10"},"autostart":false}
        """)!.AsObject();

    [Fact]
    public void ListTableAlignsColumnsWithoutTrailingBlanks()
    {
        var other = new JsonObject { ["name"] = "db-primary", ["state"] = "running", ["spec"] = new JsonObject { ["vcpus"] = 1, ["memory_mib"] = 256 }, ["pid"] = 4242 };
        string table = Output.Table([Web, other], VmCommands.ListColumnsFor([Web, other]));
        string expected =
            "NAME        STATE    VCPUS  MEMORY   CPU-LIMIT  PID   EXIT\n" +
            "web         crashed  2      2 GiB    0.5        -     triple_fault: triple fault at rip 0x10\n" +
            "db-primary  running  1      256 MiB  -          4242\n";
        Assert.Equal(expected, table);
        // In cluster mode the records carry their host: the HOST column comes last.
        var placed = (JsonObject)other.DeepClone();
        placed["host"] = "n2";
        Assert.EndsWith("EXIT  HOST\n", Output.Table([placed], VmCommands.ListColumnsFor([placed])).Split('\n')[0] + "\n");
    }

    [Fact]
    public void KeyValuesFlattenNestedFields()
    {
        string text = Output.KeyValues(Web);
        Assert.Matches(@"(?m)^spec\.memory_mib +2048$", text);
        Assert.Matches(@"(?m)^spec\.initrd +\[\]$", text);
        Assert.Matches(@"(?m)^spec\.disks\[1\]\.path +/x\.img$", text);
        Assert.Matches(@"(?m)^exit\.detail +triple\ fault\ at\ rip\ 0x10$", text);
        Assert.Matches(@"(?m)^pid +\-$", text);
    }

    [Fact]
    public void YamlIsBlockStyleWithCompactSequences()
    {
        string expected = """
            name: web
            state: crashed
            spec:
              memory_mib: 2048
              vcpus: 2
              kernel: null
              initrd: []
              disks:
              - disk: d1
              - path: /x.img
                readonly: true
            limits:
              cpu: 0.5
            pid: null
            exit:
              kind: triple_fault
              detail: triple fault at rip 0x10
            autostart: false

            """.ReplaceLineEndings("\n");
        Assert.Equal(expected, Output.Yaml(Web));
        Assert.Equal("[]\n", Output.Yaml(new JsonArray()));
        Assert.Equal("- - 1\n  - 2\n- []\n", Output.Yaml(JsonNode.Parse("[[1,2],[]]")));
    }

    [Theory]
    [InlineData("web", "web")]
    [InlineData("", "\"\"")]
    [InlineData("yes", "\"yes\"")]
    [InlineData("null", "\"null\"")]
    [InlineData("0.5", "\"0.5\"")]
    [InlineData("0x10", "\"0x10\"")]
    [InlineData("-x", "\"-x\"")]
    [InlineData("a: b", "\"a: b\"")]
    [InlineData("a #b", "\"a #b\"")]
    [InlineData(" lead", "\" lead\"")]
    [InlineData("2026-12-02T18:00:00Z", "\"2026-12-02T18:00:00Z\"")]
    [InlineData("line\nbreak \"q\" \\", "\"line\\nbreak \\\"q\\\" \\\\\"")]
    [InlineData("ünïcode", "\"ünïcode\"")]
    [InlineData("/var/lib/dirigent", "/var/lib/dirigent")]
    [InlineData("worker process died (signal 9)", "worker process died (signal 9)")]
    public void YamlStringsAreQuotedOnlyWhenPlainWouldReadDifferently(string value, string yaml)
    {
        Assert.Equal(yaml, Output.YamlString(value));
    }

    [Fact]
    public void ListAnswersGiveTheirArray()
    {
        Assert.Single(Output.Items(JsonNode.Parse("""{"vms":[{"name":"a"}]}"""), "vms"));
        Assert.Equal(2, Output.Items(JsonNode.Parse("""{"items":[1,2],"count":2}"""), "snapshots").Count);
        Assert.Throws<CliException>(() => Output.Items(JsonNode.Parse("""{"a":[],"b":[]}"""), "vms"));
    }

    [Fact]
    public void SseParserFollowsTheEventStreamFormat()
    {
        var p = new SseParser();
        var events = new List<SseEvent>();
        foreach (string line in new[]
        {
            ": keep-alive", "",
            "id: 7", "event: vm-state-changed", "data: {\"vm\":\"web\",\"old_state\":\"stopped\",\"new_state\":\"starting\"}", "",
            "data:a", "data: b", "",
        })
            if (p.Feed(line) is { } e) events.Add(e);
        Assert.Equal(2, events.Count);
        Assert.Equal("7 vm-state-changed vm=web old_state=stopped new_state=starting", events[0].ToText());
        Assert.Equal("""{"id":7,"event":"vm-state-changed","data":{"vm":"web","old_state":"stopped","new_state":"starting"}}""", events[0].ToJson());
        // The id carries over (last event id); the type resets to "message"; data lines join with \n.
        Assert.Equal(new SseEvent("7", "message", "a\nb"), events[1]);
    }

    [Fact]
    public void EventTextFlattensNestedObjectsAndQuotesSpaces()
    {
        var e = new SseEvent("3", "operation-updated", """{"operation":{"id":"x1","status":"failed","error":"wrong state: stopped","progress":null}}""");
        Assert.Equal("3 operation-updated operation.id=x1 operation.status=failed operation.error=\"wrong state: stopped\"", e.ToText());
    }

    [Fact]
    public void ConsoleEscapeDetachesAndPassesEverythingElse()
    {
        var esc = new DetachEscape();
        var (fwd, action) = esc.Feed("ls\r"u8);
        Assert.Equal("ls\r"u8.ToArray(), fwd);
        Assert.Equal(DetachEscape.Action.None, action);

        // Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A h asks for help; another key after Ctrl-A is dropped.
        (fwd, action) = esc.Feed([1, 1, (byte)'x', 1, (byte)'h', 1, (byte)'q', (byte)'y']);
        Assert.Equal(new byte[] { 1, (byte)'x', (byte)'y' }, fwd);
        Assert.Equal(DetachEscape.Action.Help, action);

        // Ctrl-A at the end of one read and d at the start of the next still detach; input after d is dropped.
        (fwd, action) = esc.Feed([(byte)'a', 1]);
        Assert.Equal(new byte[] { (byte)'a' }, fwd);
        Assert.Equal(DetachEscape.Action.None, action);
        (fwd, action) = esc.Feed(Encoding.ASCII.GetBytes("dmore"));
        Assert.Empty(fwd);
        Assert.Equal(DetachEscape.Action.Detach, action);
    }
}
