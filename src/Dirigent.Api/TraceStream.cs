using System.Text;
using System.Threading.Channels;
using Dirigent.Vmm;
using Microsoft.AspNetCore.Http;

namespace Dirigent.Api;

/// <summary>
/// GET /v1/vm/trace/stream: the system-call trace as a chunked application/x-ndjson response, one JSON object per
/// line, for as long as the client reads (curl -N). Each stream has its own tracer beside the VM's file trace, so
/// several can run at once. The vCPUs never wait on the network: lines go through a bounded queue, and when a slow
/// client lets it fill, the lines that did not fit are counted and the stream ends with {"dropped": N} once it
/// catches up (never silently).
/// </summary>
internal sealed class TraceStream : TextWriter
{
    /// <summary>Lines queued for a client before new ones are dropped (about 16 MiB of typical events).</summary>
    public const int QueueLines = 65536;

    private readonly Channel<string> _queue = Channel.CreateBounded<string>(new BoundedChannelOptions(QueueLines)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
        SingleReader = true,
    });
    private readonly StringBuilder _partial = new();
    private long _dropped;

    public override Encoding Encoding => Encoding.UTF8;

    /// <summary>The tracer writes whole lines with WriteLine (under its own lock): each is one queue item.</summary>
    public override void WriteLine(string? value)
    {
        if (!_queue.Writer.TryWrite(value ?? "")) Interlocked.Increment(ref _dropped);
    }

    // Anything else written char by char is kept until its newline (not used by the tracer, but correct).
    public override void Write(char value)
    {
        if (value == '\n') { WriteLine(_partial.ToString()); _partial.Clear(); }
        else _partial.Append(value);
    }

    public void Complete() => _queue.Writer.TryComplete();

    /// <summary>Copies lines to the response until the client goes, the VM ends or <paramref name="ct"/> fires.</summary>
    public async Task PumpAsync(HttpResponse response, Task vmEnded, CancellationToken ct)
    {
        _ = vmEnded.ContinueWith(_ => Complete(), TaskScheduler.Default);
        var reader = _queue.Reader;
        var buf = new StringBuilder();
        try
        {
            while (await reader.WaitToReadAsync(ct))
            {
                buf.Clear();
                while (buf.Length < 64 * 1024 && reader.TryRead(out var line)) buf.Append(line).Append('\n');
                await response.WriteAsync(buf.ToString(), ct);
                await response.Body.FlushAsync(ct);
            }
        }
        catch (OperationCanceledException) { return; } // the client went away or the server stops
        long dropped = Interlocked.Read(ref _dropped);
        if (dropped > 0) await response.WriteAsync($"{{\"dropped\":{dropped}}}\n", CancellationToken.None);
    }
}
