using System.Text.Json.Nodes;

namespace Dirigent.Daemon.Operations;

/// <summary>Where an operation is in its life. Only <see cref="Pending"/> and <see cref="Running"/> can still change.</summary>
public enum OperationStatus
{
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// <summary>
/// A snapshot of one asynchronous operation (what GET /api/v1/operations/{id} will return). Immutable: the manager
/// hands out a fresh snapshot whenever the operation changes, so a caller never sees a half-updated one.
/// </summary>
/// <param name="Id">128 random bits, base64url without padding (22 characters): unguessable and safe in a URL path.</param>
/// <param name="Target">The queue key, e.g. "vms/web": operations on the same target run one at a time, in order.</param>
/// <param name="Error">One line, set only when <see cref="Status"/> is <see cref="OperationStatus.Failed"/> (or a cancel reason).</param>
/// <param name="Result">What the work returned on success; shared, so callers must not mutate it.</param>
/// <param name="Progress">The last progress line the work reported, if any.</param>
public sealed record Operation(
    string Id,
    string Target,
    string Description,
    OperationStatus Status,
    DateTimeOffset CreatedAt,
    DateTimeOffset? StartedAt,
    DateTimeOffset? FinishedAt,
    string? Error,
    JsonNode? Result,
    string? Progress)
{
    public bool IsFinished => Status is OperationStatus.Succeeded or OperationStatus.Failed or OperationStatus.Cancelled;
}

/// <summary>What a running operation's work can see and say about itself.</summary>
public sealed class OperationContext
{
    private readonly OperationManager _manager;

    internal OperationContext(OperationManager manager, string id, string target)
    {
        _manager = manager;
        Id = id;
        Target = target;
    }

    public string Id { get; }
    public string Target { get; }

    /// <summary>Records a one-line progress note on the operation (visible in Get and as an operation-updated event).</summary>
    public void Report(string progress) => _manager.ReportProgress(Id, progress);
}

/// <summary>Limits for an <see cref="OperationManager"/>.</summary>
public sealed class OperationManagerOptions
{
    /// <summary>How many operations (on different targets) may run at once; null is no limit.</summary>
    public int? MaxConcurrency { get; init; }

    /// <summary>How long a finished operation stays visible to Get/List/Wait before it is forgotten.</summary>
    public TimeSpan Retention { get; init; } = TimeSpan.FromHours(1);

    /// <summary>At most this many finished operations are kept; the oldest finished go first.</summary>
    public int MaxRetained { get; init; } = 1000;

    /// <summary>Clock for created/started/finished times, retention and event timestamps.</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;
}
