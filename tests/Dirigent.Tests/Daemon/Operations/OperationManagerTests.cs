using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Dirigent.Daemon.Operations;
using Dirigent.Tests.Inventory;

namespace Dirigent.Tests.Daemon.Operations;

/// <summary>
/// The operation engine behind the daemon's 202 + /operations/{id} API. Every ordering claim is proven with gates
/// (TaskCompletionSource) the test opens itself; timeouts are hang guards only.
/// </summary>
public sealed class OperationManagerTests
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(30);

    /// <summary>Work that says when it started and then holds until the test opens its gate.</summary>
    private sealed class Gated
    {
        public readonly TaskCompletionSource Started = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly TaskCompletionSource<JsonNode?> Gate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public int Runs;

        public async Task<JsonNode?> Work(OperationContext ctx, CancellationToken ct)
        {
            Interlocked.Increment(ref Runs);
            Started.SetResult();
            return await Gate.Task.WaitAsync(ct);
        }
    }

    private static async Task<Operation> Done(OperationManager m, Operation op)
    {
        var r = await m.WaitAsync(op.Id, Hang);
        Assert.NotNull(r);
        Assert.True(r.IsFinished, $"{op.Description} did not finish within the hang guard");
        return r;
    }

    [Fact]
    public async Task SameTargetRunsOneAtATimeInSubmissionOrder()
    {
        using var m = new OperationManager();
        var g = Enumerable.Range(0, 3).Select(_ => new Gated()).ToArray();
        var ops = g.Select((x, i) => m.Submit("vms/web", $"op{i}", x.Work)).ToArray();

        await g[0].Started.Task.WaitAsync(Hang);
        Assert.Equal(OperationStatus.Running, m.Get(ops[0].Id)!.Status);
        Assert.Equal(OperationStatus.Pending, m.Get(ops[1].Id)!.Status);
        Assert.Equal(OperationStatus.Pending, m.Get(ops[2].Id)!.Status);

        g[0].Gate.SetResult(JsonValue.Create(0));
        await g[1].Started.Task.WaitAsync(Hang);
        Assert.Equal(OperationStatus.Succeeded, m.Get(ops[0].Id)!.Status);
        Assert.Equal(OperationStatus.Pending, m.Get(ops[2].Id)!.Status);
        Assert.Equal(0, g[2].Runs);

        g[1].Gate.SetResult(null);
        await g[2].Started.Task.WaitAsync(Hang);
        g[2].Gate.SetResult(null);
        var last = await Done(m, ops[2]);
        Assert.Equal(OperationStatus.Succeeded, last.Status);
        Assert.True(m.Get(ops[1].Id)!.FinishedAt <= last.StartedAt);
        Assert.Equal(0, (int)m.Get(ops[0].Id)!.Result!);
    }

    [Fact]
    public async Task DifferentTargetsRunAtTheSameTime()
    {
        using var m = new OperationManager();
        var a = new Gated();
        var b = new Gated();
        var opA = m.Submit("vms/a", "a", a.Work);
        var opB = m.Submit("vms/b", "b", b.Work);

        // Both have started while neither gate is open: they are running at once.
        await Task.WhenAll(a.Started.Task, b.Started.Task).WaitAsync(Hang);
        Assert.Equal(OperationStatus.Running, m.Get(opA.Id)!.Status);
        Assert.Equal(OperationStatus.Running, m.Get(opB.Id)!.Status);

        // B can finish while A still holds its gate.
        b.Gate.SetResult(null);
        Assert.Equal(OperationStatus.Succeeded, (await Done(m, opB)).Status);
        Assert.Equal(OperationStatus.Running, m.Get(opA.Id)!.Status);
        a.Gate.SetResult(null);
        Assert.Equal(OperationStatus.Succeeded, (await Done(m, opA)).Status);
    }

    [Fact]
    public async Task MaxConcurrencyHoldsOtherTargetsPending()
    {
        using var m = new OperationManager(new OperationManagerOptions { MaxConcurrency = 1 });
        var a = new Gated();
        var b = new Gated();
        var opA = m.Submit("vms/a", "a", a.Work);
        var opB = m.Submit("vms/b", "b", b.Work);

        await a.Started.Task.WaitAsync(Hang);
        Assert.Equal(OperationStatus.Pending, m.Get(opB.Id)!.Status);
        a.Gate.SetResult(null);
        await b.Started.Task.WaitAsync(Hang);
        b.Gate.SetResult(null);
        Assert.Equal(OperationStatus.Succeeded, (await Done(m, opB)).Status);
    }

    [Fact]
    public async Task FailureDoesNotBlockTheQueue()
    {
        using var m = new OperationManager();
        var failAsync = m.Submit("vms/web", "fails", async (_, _) =>
        {
            await Task.Yield();
            throw new InvalidOperationException("disk missing\nsecond line");
        });
        // Throws before returning a Task at all.
        var failSync = m.Submit("vms/web", "throws", (_, _) => throw new InvalidOperationException("sync"));
        var ok = m.Submit("vms/web", "ok", (_, _) => Task.FromResult<JsonNode?>(JsonValue.Create("fine")));

        var r = await Done(m, ok);
        Assert.Equal(OperationStatus.Succeeded, r.Status);
        Assert.Equal("fine", (string)r.Result!);
        var f = m.Get(failAsync.Id)!;
        Assert.Equal(OperationStatus.Failed, f.Status);
        Assert.Equal("disk missing second line", f.Error);
        Assert.Equal("sync", m.Get(failSync.Id)!.Error);
    }

    [Fact]
    public async Task CancelPendingNeverRunsIt()
    {
        using var m = new OperationManager();
        var first = new Gated();
        var victim = new Gated();
        var opFirst = m.Submit("vms/web", "first", first.Work);
        var opVictim = m.Submit("vms/web", "victim", victim.Work);
        var opAfter = m.Submit("vms/web", "after", (_, _) => Task.FromResult<JsonNode?>(null));

        await first.Started.Task.WaitAsync(Hang);
        var c = m.Cancel(opVictim.Id)!;
        Assert.Equal(OperationStatus.Cancelled, c.Status);
        Assert.NotNull(c.FinishedAt);
        Assert.Null(c.StartedAt);

        first.Gate.SetResult(null);
        Assert.Equal(OperationStatus.Succeeded, (await Done(m, opAfter)).Status);
        Assert.Equal(0, victim.Runs);
        Assert.Equal(OperationStatus.Cancelled, m.Get(opVictim.Id)!.Status);
        Assert.Null(m.Cancel("no-such-id"));
    }

    [Fact]
    public async Task CancelRunningCancelsItsTokenAndTheQueueMovesOn()
    {
        using var m = new OperationManager();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var op = m.Submit("vms/web", "long", async (_, ct) =>
        {
            started.SetResult();
            await Task.Delay(Timeout.Infinite, ct);
            return null;
        });
        var next = m.Submit("vms/web", "next", (_, _) => Task.FromResult<JsonNode?>(null));

        await started.Task.WaitAsync(Hang);
        m.Cancel(op.Id);
        var r = await Done(m, op);
        Assert.Equal(OperationStatus.Cancelled, r.Status);
        Assert.Equal(OperationStatus.Succeeded, (await Done(m, next)).Status);

        // Cancelling a finished operation changes nothing.
        Assert.Equal(OperationStatus.Succeeded, m.Cancel(next.Id)!.Status);
    }

    [Fact]
    public async Task WaitTimeoutReturnsTheRunningOperation()
    {
        using var m = new OperationManager();
        var g = new Gated();
        var op = m.Submit("vms/web", "slow", g.Work);
        await g.Started.Task.WaitAsync(Hang);

        var r = await m.WaitAsync(op.Id, TimeSpan.FromMilliseconds(20));
        Assert.NotNull(r);
        Assert.Equal(OperationStatus.Running, r.Status);
        Assert.Equal(OperationStatus.Running, (await m.WaitAsync(op.Id, TimeSpan.Zero))!.Status);

        g.Gate.SetResult(JsonValue.Create(7));
        var done = await Done(m, op);
        Assert.Equal(7, (int)done.Result!);
        Assert.Null(await m.WaitAsync("unknown", TimeSpan.Zero));
    }

    [Fact]
    public async Task FinishedOperationsAreForgottenAfterRetention()
    {
        var time = new FakeTime();
        using var m = new OperationManager(new OperationManagerOptions { Time = time, Retention = TimeSpan.FromMinutes(10) });
        var running = new Gated();
        var opRunning = m.Submit("vms/long", "running", running.Work);
        var op = m.Submit("vms/web", "quick", (_, _) => Task.FromResult<JsonNode?>(null));
        await Done(m, op);
        await running.Started.Task.WaitAsync(Hang);

        time.Advance(TimeSpan.FromMinutes(9));
        Assert.NotNull(m.Get(op.Id));
        time.Advance(TimeSpan.FromMinutes(2));
        Assert.Null(m.Get(op.Id));
        Assert.Equal([opRunning.Id], m.List().Select(o => o.Id));

        // Running operations are never pruned, however old; once finished, their own retention starts.
        running.Gate.SetResult(null);
        var r = await Done(m, opRunning);
        Assert.Equal(time.GetUtcNow(), r.FinishedAt);
        time.Advance(TimeSpan.FromMinutes(9));
        Assert.NotNull(m.Get(opRunning.Id));
        time.Advance(TimeSpan.FromMinutes(1));
        Assert.Empty(m.List());
    }

    [Fact]
    public async Task FinishedOperationsBeyondTheCountLimitAreForgottenOldestFirst()
    {
        using var m = new OperationManager(new OperationManagerOptions { MaxRetained = 2 });
        var ops = new List<Operation>();
        for (int i = 0; i < 3; i++)
        {
            var op = m.Submit("vms/web", $"op{i}", (_, _) => Task.FromResult<JsonNode?>(null));
            await Done(m, op);
            ops.Add(op);
        }
        Assert.Null(m.Get(ops[0].Id));
        Assert.Equal(ops.Skip(1).Select(o => o.Id), m.List().Select(o => o.Id));
    }

    [Fact]
    public async Task TwentyConcurrentSubmitsToTwentyTargetsAllSucceed()
    {
        using var m = new OperationManager();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var ops = new ConcurrentBag<Operation>();
        var submits = Enumerable.Range(0, 20).Select(i => Task.Run(() =>
            ops.Add(m.Submit($"vms/vm{i}", $"start {i}", async (_, _) =>
            {
                await gate.Task;
                return JsonValue.Create(i);
            })))).ToArray();
        await Task.WhenAll(submits).WaitAsync(Hang);
        gate.SetResult();

        var results = new List<Operation>();
        foreach (var op in ops)
            results.Add(await Done(m, op));
        Assert.All(results, r => Assert.Equal(OperationStatus.Succeeded, r.Status));
        Assert.Equal(Enumerable.Range(0, 20), results.Select(r => (int)r.Result!).Order());
        Assert.Equal(20, results.Select(r => r.Id).Distinct().Count());
        // 128 bits as unpadded base64url: 22 characters from the URL-safe alphabet.
        Assert.All(results, r => Assert.Matches("^[A-Za-z0-9_-]{22}$", r.Id));
    }

    [Fact]
    public async Task ProgressIsVisibleWhileRunning()
    {
        using var m = new OperationManager();
        var reported = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var op = m.Submit("vms/web", "copy", async (ctx, _) =>
        {
            ctx.Report("50%\n");
            reported.SetResult();
            await gate.Task;
            return null;
        });
        await reported.Task.WaitAsync(Hang);
        Assert.Equal("50%", m.Get(op.Id)!.Progress);
        gate.SetResult();
        await Done(m, op);
    }
}
