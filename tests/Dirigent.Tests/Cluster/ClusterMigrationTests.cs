using System.Net;
using System.Text.Json.Nodes;
using Dirigent.Tests.Api;
using Dirigent.Tests.Daemon.Integration;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// Live migration between the two hosts of a cluster (guests on the software CPU, kernel files on storage both hosts
/// see): asked through either daemon, the VM ends up running on the target with one worker, the record's host and pid
/// move only then, and the guest goes on where it was (its console, its RAM, its counter). A migration that fails —
/// the target's worker killed midway, the target's daemon not answering — leaves the VM running on the source with
/// its record unchanged, and says why.
/// </summary>
[Collection(nameof(ClusterPair))]
public sealed class ClusterMigrationTests(ClusterPairFixture pair)
{
    [SkippableFact]
    public async Task ARunningVmMovesToAnotherHostAndKeepsRunning()
    {
        var rig = await pair.RigAsync();
        var (n1, n2) = (rig.Hosts[0], rig.Hosts[1]);
        await n1.CreateTinyVmAsync("mover", pin: null, restart: "always");
        await n1.ActAsync("mover", "start");
        var before = await n1.GetAsync("/api/v1/vms/mover");
        string src = before.Str("host"), dst = Other(src);
        await rig[src].ConsoleUntilAsync("mover", ApiTestVm.ReadyLine);

        // Refused at once: the host it is on, a host that is not up.
        Assert.Equal(HttpStatusCode.Conflict, await n2.StatusAsync(HttpMethod.Post, "/api/v1/vms/mover/migrate", new { host = src }));
        Assert.Equal(HttpStatusCode.Conflict, await n2.StatusAsync(HttpMethod.Post, "/api/v1/vms/mover/migrate", new { host = "n7" }));

        // Asked through the target's daemon: forwarded to the source, which drives it.
        var done = await rig[dst].ActAsync("mover", "migrate", new { host = dst });
        var result = done["result"]!.AsObject();
        Assert.Equal(dst, result.Str("host"));
        // The figures: the downtime runs from the source's pause to the target's report that the VM runs there.
        var fig = result["migration"]!.AsObject();
        Assert.Equal(("target_resumed", src, dst), (fig.Str("downtime_end"), fig.Str("from"), fig.Str("to")));
        double down = fig["downtime_ms"]!.GetValue<double>(), ack = fig["ack_ms"]!.GetValue<double>();
        Assert.True(down >= ack && ack > 0 && fig["total_ms"]!.GetValue<double>() >= ack, fig.ToJsonString());
        Assert.Contains("dirigent_vm_migration_downtime_seconds{vm=\"mover\",to=\"" + dst + "\"}",
            await (await rig[src].Http.GetAsync("/metrics")).Content.ReadAsStringAsync());

        var after = await n1.GetAsync("/api/v1/vms/mover");
        Assert.Equal(("running", dst), (after.Str("state"), after.Str("host")));
        Assert.Equal([(dst, after["pid"]!.GetValue<int>())], rig.WorkersOf("mover"));
        Assert.Contains($"VM 'mover' migrated in from host '{src}'", rig[dst].Stderr);
        Assert.Contains("handed the VM to another host", rig[src].Stderr);

        // The VM answers on its new host: pause and resume through the source's daemon (forwarded to the target).
        await rig[src].ActAsync("mover", "pause");
        Assert.Equal("paused", (await rig[dst].GetAsync("/api/v1/vms/mover")).Str("state"));
        await rig[src].ActAsync("mover", "resume");
        Assert.Equal("running", (await rig[dst].GetAsync("/api/v1/vms/mover")).Str("state"));
        Assert.Equal([dst], rig.WorkersOf("mover").Select(w => w.Host));
        await RemoveAsync(rig, "mover");
    }

    [SkippableFact]
    public async Task TheGuestsConsoleNoteAndCounterGoOnOnTheTarget()
    {
        var rig = await pair.RigAsync();
        var n1 = rig.Hosts[0];
        await StartCounterGuestAsync(rig, "tally");
        string src = (await n1.GetAsync("/api/v1/vms/tally")).Str("host"), dst = Other(src);

        // Before: a note typed into the guest over the console, and the guest's count so far.
        const string note = "note-for-the-target-7f3a";
        CounterGuest.Answer first;
        using (var ws = await rig[src].ConsoleAsync("tally"))
        {
            await DaemonProcess.ReadUntilAsync(ws, CounterGuest.ReadyLine);
            await CounterGuest.SendAsync(ws, note + "\r");
            first = await CounterGuest.AskAsync(ws, 1);
        }
        Assert.Equal(note, first.Note);

        await n1.ActAsync("tally", "migrate", new { host = dst });

        // After, over the target's console: the same note, the next query number, a count that went on from where it
        // was (a guest started afresh would answer query 1 with no note and a count from 0) and keeps going there.
        using (var ws = await rig[dst].ConsoleAsync("tally"))
        {
            var second = await CounterGuest.AskAsync(ws, 2);
            Assert.Equal(note, second.Note);
            Assert.True(second.Count > first.Count, $"count {second.Count} after the migration, {first.Count} before");
            var third = await CounterGuest.AskAsync(ws, 3);
            Assert.True(third.Count > second.Count, $"count {third.Count}, then {second.Count}: the guest does not run on the target");
        }
        // The record and `vm list` (through either daemon) name the new host; one worker, there.
        var rec = await rig.Hosts[1].GetAsync("/api/v1/vms/tally");
        Assert.Equal(("running", dst), (rec.Str("state"), rec.Str("host")));
        Assert.Equal([(dst, rec["pid"]!.GetValue<int>())], rig.WorkersOf("tally"));
        foreach (var via in rig.Hosts)
        {
            var (exit, output, err) = ClusterRig.Cli(via, "vm", "list");
            Assert.True(exit == 0, err);
            var line = output.Split('\n').Single(l => l.StartsWith("tally ", StringComparison.Ordinal));
            Assert.Equal(dst, line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1]);
        }
        await RemoveAsync(rig, "tally");
    }

    [SkippableFact]
    public async Task WhenTheTargetsWorkerDiesMidwayTheVmRunsOnAtTheSource()
    {
        var rig = await pair.RigAsync();
        var n1 = rig.Hosts[0];
        await StartCounterGuestAsync(rig, "stayer");
        var rec = await n1.GetAsync("/api/v1/vms/stayer");
        string src = rec.Str("host"), dst = Other(src);
        int pid = rec["pid"]!.GetValue<int>();
        CounterGuest.Answer before;
        using (var ws = await rig[src].ConsoleAsync("stayer"))
        {
            await DaemonProcess.ReadUntilAsync(ws, CounterGuest.ReadyLine);
            await CounterGuest.SendAsync(ws, "kept");
            before = await CounterGuest.AskAsync(ws, 1);
        }

        // The migration is stopped at a chosen point, with signals: the source's worker is frozen first (so it cannot
        // connect yet), the target's incoming worker is frozen once it listens, the source is let go and connects
        // (the kernel queues the connection), and then the target's worker is killed with the stream open.
        var srcWorker = Assert.Single(rig.WorkersOf("stayer")).Pid;
        ProcFs.Signal(srcWorker, ProcFs.SigStop);
        List<int> incoming = [];
        int port = 0;
        try
        {
            var op = await rig[src].PostAsync("/api/v1/vms/stayer/migrate", new { host = dst }, HttpStatusCode.Accepted);
            await rig.WaitAsync(() =>
            {
                incoming = IncomingWorkers(rig[dst], "stayer", out port);
                return Task.FromResult(incoming.Count > 0 && ProcFs.TcpSocket(port, ProcFs.Listen));
            }, "the target's incoming worker listening");
            foreach (int p in incoming) ProcFs.Signal(p, ProcFs.SigStop);
            ProcFs.Signal(srcWorker, ProcFs.SigCont);
            await rig.WaitAsync(() => Task.FromResult(ProcFs.TcpSocket(port, ProcFs.Established)), "the source connected to the target");
            foreach (int p in incoming) ProcFs.Signal(p, ProcFs.SigKill);

            var end = await rig[src].WaitOperationAsync(op);
            Assert.Equal("failed", end.Str("status"));
            string error = end.Str("error");
            Assert.Contains($"migration of VM 'stayer' to host '{dst}' failed", error);
            Assert.Contains("the VM keeps running here", error);
            Assert.DoesNotContain("\n", error);
        }
        finally
        {
            try { ProcFs.Signal(srcWorker, ProcFs.SigCont); } catch (InvalidOperationException) { }
        }

        // The record still names the source, with the same worker; nothing runs on the target; the guest goes on.
        var after = await rig[dst].GetAsync("/api/v1/vms/stayer");
        Assert.Equal(("running", src, pid), (after.Str("state"), after.Str("host"), after["pid"]!.GetValue<int>()));
        Assert.Equal([(src, srcWorker)], rig.WorkersOf("stayer"));
        using (var ws = await rig[src].ConsoleAsync("stayer"))
        {
            var now = await CounterGuest.AskAsync(ws, 2);
            Assert.Equal("kept", now.Note);
            Assert.True(now.Count > before.Count, $"count {now.Count}, {before.Count} before the failed migration");
        }
        Assert.Equal((src, pid), ((await rig[src].GetAsync("/api/v1/vms/stayer")).Str("host"), (await rig[src].GetAsync("/api/v1/vms/stayer"))["pid"]!.GetValue<int>()));

        // A target whose daemon does not answer (killed; its lease still live) is a problem at once, 502, and
        // nothing starts; once the daemon is back the same request is accepted.
        await rig[dst].KillDaemonAsync();
        try
        {
            var (status, body, resp) = await rig[src].SendAsync(HttpMethod.Post, "/api/v1/vms/stayer/migrate", new { host = dst });
            Assert.Equal(HttpStatusCode.BadGateway, status);
            Assert.Equal("application/problem+json", resp.Content.Headers.ContentType?.MediaType);
            Assert.Contains($"cannot migrate VM 'stayer' to host '{dst}'", body!["detail"]!.GetValue<string>());
            Assert.Contains("did not answer", body["detail"]!.GetValue<string>());
        }
        finally { await rig[dst].StartDaemonAsync(); }
        var still = await rig[src].GetAsync("/api/v1/vms/stayer");
        Assert.Equal(("running", src, pid), (still.Str("state"), still.Str("host"), still["pid"]!.GetValue<int>()));
        await RemoveAsync(rig, "stayer");
    }

    private static string Other(string host) => host == "n1" ? "n2" : "n1";

    /// <summary>A VM of <see cref="CounterGuest"/> (kernel in n1's home, which both hosts see), started and placed.</summary>
    internal static async Task StartCounterGuestAsync(ClusterRig rig, string name)
    {
        var n1 = rig.Hosts[0];
        string kernel = Path.Combine(n1.Home, "counter-guest.bin");
        if (!File.Exists(kernel)) File.WriteAllBytes(kernel, CounterGuest.Build());
        await n1.PostAsync("/api/v1/vms", new { name, spec = new { kernel, memory_mib = 16, accel = "emu" } }, HttpStatusCode.Created);
        await n1.ActAsync(name, "start");
    }

    /// <summary>The processes of <paramref name="vm"/>'s incoming worker on host <paramref name="d"/>, and its port.</summary>
    private static List<int> IncomingWorkers(DaemonProcess d, string vm, out int port)
    {
        port = 0;
        var found = new List<int>();
        foreach (int pid in d.ProcessesOfHome())
        {
            string? cmd = ProcFs.CommandLine(pid);
            if (cmd == null || !cmd.Contains($"{d.Home}/vms/{vm}/", StringComparison.Ordinal)) continue;
            var m = System.Text.RegularExpressions.Regex.Match(cmd, @"--incoming tcp:[0-9.]+:([0-9]+)");
            if (!m.Success) continue;
            port = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            found.Add(pid);
        }
        return found;
    }

    /// <summary>Stops and deletes a test's VM, so that the shared hosts are left as they were.</summary>
    internal static async Task RemoveAsync(ClusterRig rig, string name)
    {
        var d = rig.Hosts[0];
        await d.ActAsync(name, "stop");
        var (status, body, _) = await d.SendAsync(HttpMethod.Delete, $"/api/v1/vms/{name}");
        Assert.True(status is HttpStatusCode.NoContent or HttpStatusCode.OK, $"DELETE {name}: {(int)status} {body?.ToJsonString()}");
    }
}
