using System.Text.Json;
using Dirigent.Daemon.Disks;
using Dirigent.Daemon.Host;
using Dirigent.Daemon.Operations;
using Dirigent.Daemon.Vms;
using Dirigent.Daemon.Workers;
using Dirigent.Inventory;
using Dirigent.Tests.Daemon.Workers;

namespace Dirigent.Tests.Daemon.Vms;

/// <summary>
/// The VM manager over a store that goes out (as etcd does when it is restarted) with real workers (the tiny guest):
/// a write whose answer is lost but which landed must not leave a record in a state nothing will ever move on, and a
/// worker that ends while the store is out must have its exit recorded once the store is back.
/// </summary>
public sealed class StoreOutageTests : IAsyncLifetime
{
    private static readonly TimeSpan Hang = WorkerFixture.Hang;
    private readonly WorkerFixture _workers = new();
    private OutageInventory _inv = null!;
    private EventHub _events = null!;
    private OperationManager _ops = null!;
    private VmManager _vms = null!;
    private VmStore _store = null!;

    public Task InitializeAsync()
    {
        var paths = new DaemonPaths(Path.Combine(_workers.Dir, "home"));
        paths.Create();
        _inv = new OutageInventory(SqliteInventory.Open(paths.InventoryDb));
        _events = new EventHub();
        _ops = new OperationManager(new OperationManagerOptions(), _events);
        _store = new VmStore(_inv);
        _vms = new VmManager(_store, new DiskManager(_inv, paths, _store), _ops, _events, _workers.Supervisor, _workers.Cgroups,
            paths, TextWriter.Synchronized(_workers.Log));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        _inv.Down = false;
        foreach (var rt in _vms.Live.Values) _workers.Track(rt.Handle);
        _vms.ReleaseWorkers();
        await _workers.DisposeAsync();
        _ops.Dispose();
        await _inv.DisposeAsync();
    }

    private async Task CreateAsync(string name)
    {
        using var body = JsonDocument.Parse(JsonSerializer.Serialize(new { name, spec = new { kernel = _workers.Kernel, memory_mib = 16, accel = "emu" } }));
        await _vms.CreateAsync(body.RootElement, CancellationToken.None);
    }

    private async Task<Operation> FinishedAsync(Operation op)
        => await _ops.WaitAsync(op.Id, Hang) is { IsFinished: true } done ? done : throw new TimeoutException($"operation '{op.Description}' still running after {Hang}\n{_workers.Log}");

    private async Task<VmRecord> RecordAsync(string name) => (await _store.RequireAsync(name)).Record;

    private async Task StartRunningAsync(string name)
    {
        var op = await FinishedAsync(await _vms.StartAsync(name, CancellationToken.None));
        Assert.True(op.Status == OperationStatus.Succeeded, $"start: {op.Status} {op.Error}\n{_workers.Log}");
        Assert.Equal(VmStates.Running, (await RecordAsync(name)).State);
    }

    /// <summary>Waits for the VM's next state change to <paramref name="to"/>, published on the event hub.</summary>
    private async Task WaitStateAsync(Subscription sub, string name, string from, string to)
    {
        using var cts = new CancellationTokenSource(Hang);
        try
        {
            while (true)
            {
                var e = await sub.Reader.ReadAsync(cts.Token);
                if (e.Data is VmStateChanged c && c.Vm == name && c.OldState == from && c.NewState == to) return;
            }
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"VM '{name}' did not go from {from} to {to} within {Hang}: it is {(await RecordAsync(name)).State}\n{_workers.Log}");
        }
    }

    [Fact]
    public async Task A_start_whose_starting_write_landed_unanswered_ends_stopped_once_the_store_is_back()
    {
        await CreateAsync("ambig-start");
        using var sub = _events.Subscribe();
        _inv.LoseAnswerOfPut((key, value) => key == VmStore.Key("ambig-start") && value.Contains("\"state\":\"starting\"", StringComparison.Ordinal));

        var op = await FinishedAsync(await _vms.StartAsync("ambig-start", CancellationToken.None));
        Assert.Equal(OperationStatus.Failed, op.Status);
        Assert.Contains("unreachable", op.Error);
        Assert.Empty(_vms.Live);

        _inv.Down = false;
        await WaitStateAsync(sub, "ambig-start", VmStates.Starting, VmStates.Stopped);
        var rec = await RecordAsync("ambig-start");
        Assert.Equal(("start_failed", null, null), (rec.Exit?.Kind, rec.Pid, rec.StartedAt));
        Assert.Contains("store", rec.Exit!.Detail);

        // Settled: the VM starts as usual now.
        await StartRunningAsync("ambig-start");
        Assert.Equal((await RecordAsync("ambig-start")).Pid, _vms.Live["ambig-start"].Handle.Pid);
    }

    [Fact]
    public async Task A_stop_whose_stopping_write_landed_unanswered_leaves_the_worker_running_and_stoppable()
    {
        await CreateAsync("ambig-stop");
        await StartRunningAsync("ambig-stop");
        var worker = _vms.Live["ambig-stop"].Handle;
        using var sub = _events.Subscribe();
        _inv.LoseAnswerOfPut((key, value) => key == VmStore.Key("ambig-stop") && value.Contains("\"state\":\"stopping\"", StringComparison.Ordinal));

        var op = await FinishedAsync(await _vms.StopAsync("ambig-stop", CancellationToken.None));
        Assert.Equal(OperationStatus.Failed, op.Status);

        _inv.Down = false;
        await WaitStateAsync(sub, "ambig-stop", VmStates.Stopping, VmStates.Running);
        var rec = await RecordAsync("ambig-stop");
        Assert.Equal((worker.Pid, false), (rec.Pid, rec.StopRequested));
        Assert.False(worker.Exited.IsCompleted, "the worker was never told to stop, so it must still run");

        var stop = await FinishedAsync(await _vms.StopAsync("ambig-stop", CancellationToken.None));
        Assert.True(stop.Status == OperationStatus.Succeeded, $"stop: {stop.Error}");
        Assert.Equal((VmStates.Stopped, "stopped_by_request"), ((await RecordAsync("ambig-stop")).State, (await RecordAsync("ambig-stop")).Exit?.Kind));
    }

    [Fact]
    public async Task A_worker_that_dies_while_the_store_is_out_is_recorded_crashed_once_it_is_back()
    {
        await CreateAsync("dies-in-outage");
        await StartRunningAsync("dies-in-outage");
        var worker = _vms.Live["dies-in-outage"].Handle;
        using var sub = _events.Subscribe();

        _inv.Down = true;
        worker.Kill();
        await worker.Exited.WaitAsync(Hang);
        // The exit handler has tried the store and been refused before the store comes back.
        await _inv.Refused.WaitAsync(Hang);
        _inv.Down = false;

        await WaitStateAsync(sub, "dies-in-outage", VmStates.Running, VmStates.Crashed);
        var rec = await RecordAsync("dies-in-outage");
        Assert.Equal((null, null), (rec.Pid, rec.StartedAt));
        Assert.NotNull(rec.Exit);
        Assert.Empty(_vms.Live);
    }
}
