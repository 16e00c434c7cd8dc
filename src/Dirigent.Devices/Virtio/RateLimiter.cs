using Dirigent.Devices.Misc;

namespace Dirigent.Devices.Virtio;

/// <summary>
/// One token bucket's shape (Firecracker's TokenBucket): <paramref name="Size"/> tokens at most (the burst),
/// refilled at <paramref name="RatePerSecond"/>; <paramref name="OneTimeBurst"/> extra tokens are spent first and
/// never refilled (a boot that reads its image quickly, then the steady rate).
/// </summary>
public sealed record TokenBucketConfig(long Size, long RatePerSecond, long OneTimeBurst = 0)
{
    /// <summary>A bucket for <paramref name="perSecond"/> with a burst of one second's worth.</summary>
    public static TokenBucketConfig PerSecond(long perSecond) => new(perSecond, perSecond);
}

/// <summary>A device queue's limits: bytes and operations, either or both (Firecracker's RateLimiter).</summary>
public sealed record RateLimitConfig(TokenBucketConfig? Bandwidth, TokenBucketConfig? Ops);

/// <summary>
/// A token bucket in VM time. Tokens are integers; the fraction of a token earned so far is kept in token-nanoseconds
/// so no refill loses or invents credit however often it runs. A request larger than the bucket is let through when
/// the bucket is full and leaves it in debt, so it neither waits forever nor beats the long-run rate.
/// </summary>
internal sealed class TokenBucket
{
    private const long NsPerSecond = 1_000_000_000;
    public readonly long Size, Rate;
    private long _tokens, _oneTime, _lastNs, _remainder;

    public TokenBucket(TokenBucketConfig c, long nowNs)
    {
        if (c.Size <= 0 || c.RatePerSecond <= 0 || c.OneTimeBurst < 0)
            throw new ArgumentException($"token bucket size {c.Size}, rate {c.RatePerSecond}/s, one-time burst {c.OneTimeBurst}: size and rate must be positive");
        Size = c.Size;
        Rate = c.RatePerSecond;
        _tokens = Size;
        _oneTime = c.OneTimeBurst;
        _lastNs = nowNs;
    }

    /// <summary>Tokens available now, one-time burst included (negative while in debt).</summary>
    public long Available => _tokens + _oneTime;

    public void Refill(long nowNs)
    {
        long elapsed = nowNs - _lastNs;
        if (elapsed <= 0) return;
        _lastNs = nowNs;
        if (_tokens >= Size) { _remainder = 0; return; }
        Int128 credit = (Int128)elapsed * Rate + _remainder;
        Int128 add = credit / NsPerSecond;
        if (add >= Size - _tokens)
        {
            _tokens = Size;
            _remainder = 0;
        }
        else
        {
            _tokens += (long)add;
            _remainder = (long)(credit - add * NsPerSecond);
        }
    }

    /// <summary>0 when <paramref name="n"/> tokens may be taken now (after <see cref="Refill"/>); else the
    /// nanoseconds until they may.</summary>
    public long WaitNs(long n)
    {
        if (n <= 0) return 0;
        // What the refilling part must hold: the rest after the one-time burst, at most a full bucket.
        long need = Math.Min(Math.Max(n - _oneTime, 0), Size);
        if (_tokens >= need) return 0;
        Int128 ns = (Int128)(need - _tokens) * NsPerSecond - _remainder;
        return (long)((ns + Rate - 1) / Rate);
    }

    /// <summary>Takes <paramref name="n"/> tokens (only after <see cref="WaitNs"/> said 0): the one-time burst first.</summary>
    public void Take(long n)
    {
        if (n <= 0) return;
        long fromOneTime = Math.Min(_oneTime, n);
        _oneTime -= fromOneTime;
        _tokens -= n - fromOneTime;
    }
}

/// <summary>
/// A device queue's rate limiter: a bytes bucket and an ops bucket, refilled in VM time (<see cref="DeviceClock"/>),
/// so a paused VM neither earns tokens nor waits. A refused request stays first in its queue; the limiter arms one
/// timer for the moment it can go and calls the device's resume action then, as Firecracker does. Thread-safe;
/// allocates nothing per request (only a timer per throttling episode).
/// </summary>
internal sealed class RateLimiter
{
    private readonly DeviceClock _clock;
    private readonly TokenBucket? _bytes, _ops;
    private readonly Action _resume, _onTimer;
    private readonly object _lock = new();
    private Action? _cancelTimer;

    public RateLimiter(RateLimitConfig config, DeviceClock clock, Action resume)
    {
        _clock = clock;
        long now = clock.NowNs;
        if (config.Bandwidth is { } b) _bytes = new TokenBucket(b, now);
        if (config.Ops is { } o) _ops = new TokenBucket(o, now);
        _resume = resume;
        _onTimer = OnTimer;
    }

    /// <summary>Whether a timer to resume the device is armed (the device is throttled).</summary>
    public bool Throttled { get { lock (_lock) return _cancelTimer != null; } }

    /// <summary>Requests let through and refused so far.</summary>
    public long Admitted, Refused;

    /// <summary>
    /// Takes the tokens for a request of <paramref name="bytes"/> and <paramref name="ops"/> (all or nothing). When
    /// there are not enough, returns false with the VM time they will be there, and arms the resume timer for then.
    /// </summary>
    public bool TryConsume(long bytes, long ops, out long readyAtNs)
    {
        lock (_lock)
        {
            long now = _clock.NowNs;
            _bytes?.Refill(now);
            _ops?.Refill(now);
            long wait = Math.Max(_bytes?.WaitNs(bytes) ?? 0, _ops?.WaitNs(ops) ?? 0);
            if (wait == 0)
            {
                _bytes?.Take(bytes);
                _ops?.Take(ops);
                Admitted++;
                readyAtNs = now;
                return true;
            }
            readyAtNs = now + wait;
            Refused++;
            _cancelTimer ??= _clock.Schedule(readyAtNs, _onTimer);
            return false;
        }
    }

    private void OnTimer()
    {
        lock (_lock) _cancelTimer = null;
        _resume();
    }

    /// <summary>Disarms the resume timer (the device is going away).</summary>
    public void Cancel()
    {
        Action? cancel;
        lock (_lock)
        {
            cancel = _cancelTimer;
            _cancelTimer = null;
        }
        cancel?.Invoke();
    }
}
