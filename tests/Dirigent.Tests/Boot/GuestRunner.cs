using System.Text;
using Dirigent.Cli;
using Dirigent.Vmm;

namespace Dirigent.Tests.Boot;

/// <summary>
/// Runs `dirigent run` in-process with captured serial output and scripted serial input, under a watchdog.
/// </summary>
public sealed class GuestRunner
{
    private readonly StringBuilder _out = new();
    private readonly object _lock = new();
    private readonly List<(string trigger, string input)> _script = new();
    private readonly BlockingInput _stdin = new();

    public string Output { get { lock (_lock) return _out.ToString(); } }
    public string Errors { get; private set; } = "";

    /// <summary>When <paramref name="trigger"/> appears in the output, type <paramref name="input"/> on the console.</summary>
    public GuestRunner When(string trigger, string input)
    {
        _script.Add((trigger, input));
        return this;
    }

    public int Run(VmSpec cfg, TimeSpan timeout, RunOptions? opts = null)
    {
        var err = new StringWriter();
        using var cts = new CancellationTokenSource(timeout);
        var output = new WatchStream(this);
        int rc = VmLauncher.Run(cfg, TextWriter.Synchronized(err), _stdin, output, useTerminal: false, cancel: cts.Token, opts: opts);
        Errors = err.ToString();
        _stdin.Close();
        if (cts.IsCancellationRequested)
            throw new TimeoutException($"guest did not finish within {timeout}; output tail:\n{Tail(Output)}\nerrors: {Errors}");
        return rc;
    }

    public static string Tail(string s, int n = 3000) => s.Length <= n ? s : s[^n..];

    private void OnOutput(byte b)
    {
        lock (_lock)
        {
            _out.Append((char)b);
            if (_script.Count > 0 && _out.ToString().Contains(_script[0].trigger, StringComparison.Ordinal))
            {
                _stdin.Feed(Encoding.ASCII.GetBytes(_script[0].input));
                _script.RemoveAt(0);
            }
        }
    }

    private sealed class WatchStream(GuestRunner r) : Infrastructure.WriteOnlyStream
    {
        public override void Write(byte[] buffer, int offset, int count) { for (int k = 0; k < count; k++) r.OnOutput(buffer[offset + k]); }
        public override void WriteByte(byte value) => r.OnOutput(value);
    }

    /// <summary>stdin for the VM: blocks until the script feeds bytes; Close() gives end-of-file.</summary>
    private sealed class BlockingInput : Stream
    {
        private readonly System.Collections.Concurrent.BlockingCollection<byte[]> _q = new();
        private byte[] _cur = [];
        private int _pos;

        public void Feed(byte[] b) { if (!_q.IsAddingCompleted) _q.Add(b); }
        public override void Close() { _q.CompleteAdding(); base.Close(); }

        public override int Read(byte[] buffer, int offset, int count)
        {
            if (_pos >= _cur.Length)
            {
                if (!_q.TryTake(out var next, Timeout.Infinite)) return 0;
                _cur = next;
                _pos = 0;
            }
            int n = Math.Min(count, _cur.Length - _pos);
            Array.Copy(_cur, _pos, buffer, offset, n);
            _pos += n;
            return n;
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
