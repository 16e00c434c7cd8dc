using Dirigent.Cli.Terminal;
using Dirigent.Tests.Infrastructure;

namespace Dirigent.Tests.Cli;

/// <summary>
/// The serial console's output side: the guest's bytes, handed over one at a time on the vCPU thread, reach stdout
/// complete and in order through the writer thread, on their own and through Flush/Dispose, and a stdout that fails
/// costs the guest nothing.
/// </summary>
public sealed class ConsoleFrontendTests
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(30);

    /// <summary>A stdout that records every write and can signal when a byte count is reached.</summary>
    private sealed class Recorder : WriteOnlyStream
    {
        private readonly MemoryStream _all = new();
        private readonly object _lock = new();
        public int Writes;
        public int WaitFor = int.MaxValue;
        public readonly ManualResetEventSlim Reached = new();
        public bool Fail;
        public override void Write(byte[] buffer, int offset, int count)
        {
            if (Fail) throw new IOException("Broken pipe");
            lock (_lock)
            {
                _all.Write(buffer, offset, count);
                Writes++;
                if (_all.Length >= WaitFor) Reached.Set();
            }
        }
        public byte[] Bytes { get { lock (_lock) return _all.ToArray(); } }
    }

    [Fact]
    public void ManyBytesArriveCompleteAndInOrderThroughFlushesAndDispose()
    {
        var rec = new Recorder();
        var expected = new byte[100_000];
        new Random(1234).NextBytes(expected);
        var console = new ConsoleFrontend(rec, useTerminal: false);
        for (int k = 0; k < expected.Length; k++)
        {
            console.Write(expected[k]);
            if (k % 7919 == 0) console.Flush(); // a flush in mid-stream (as before the VMM's own status line)
        }
        console.Dispose();
        Assert.Equal(expected, rec.Bytes);
    }

    [Fact]
    public void OutputGoesOutWithoutAFlush()
    {
        var rec = new Recorder { WaitFor = 6 };
        using var console = new ConsoleFrontend(rec, useTerminal: false);
        foreach (byte b in "login:"u8) console.Write(b);
        Assert.True(rec.Reached.Wait(Hang), "the writer thread did not write the prompt on its own");
        Assert.Equal("login:"u8.ToArray(), rec.Bytes);
    }

    [Fact]
    public void FlushWritesWhatWasWrittenBeforeItOnTheCallersThread()
    {
        var rec = new Recorder();
        using var console = new ConsoleFrontend(rec, useTerminal: false);
        foreach (byte b in "Power down.\r\n"u8) console.Write(b);
        console.Flush();
        Assert.Equal("Power down.\r\n"u8.ToArray(), rec.Bytes);
    }

    [Fact]
    public async Task AStdoutThatFailsNeitherThrowsIntoTheGuestNorHangsDispose()
    {
        var rec = new Recorder { Fail = true };
        var console = new ConsoleFrontend(rec, useTerminal: false);
        for (int k = 0; k < 10_000; k++) console.Write((byte)'x');
        console.Flush();
        await Task.Run(console.Dispose).WaitAsync(Hang);
        Assert.Empty(rec.Bytes);
    }
}
