using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Dirigent.Storage;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;

namespace Dirigent.Tests.Lifecycle;

/// <summary>
/// `dirigent run` as a real child process: signals stop it in order (disks flushed and closed, qcow2 clean, one
/// line, status 128+signal), and a VM migrates into a `--incoming` process and finishes there.
/// </summary>
public class CliProcessTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    /// <summary>Starts `dotnet dirigent.dll ARGS` (the CLI built beside the tests) with stderr captured.</summary>
    private sealed class Child : IDisposable
    {
        public readonly Process P;
        private readonly System.Text.StringBuilder _err = new();
        private readonly object _lock = new();

        public Child(params string[] args)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, RedirectStandardInput = true };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dirigent.dll"));
            foreach (var a in args) psi.ArgumentList.Add(a);
            P = Process.Start(psi)!;
            P.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_lock) { _err.AppendLine(e.Data); Monitor.PulseAll(_lock); } };
            P.BeginErrorReadLine();
            P.OutputDataReceived += (_, _) => { };
            P.BeginOutputReadLine();
        }

        public string Err { get { lock (_lock) return _err.ToString(); } }

        public bool WaitForErr(string s, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            lock (_lock)
                while (!_err.ToString().Contains(s))
                {
                    var left = deadline - DateTime.UtcNow;
                    if (left <= TimeSpan.Zero || P.HasExited) return _err.ToString().Contains(s);
                    Monitor.Wait(_lock, TimeSpan.FromMilliseconds(Math.Min(left.TotalMilliseconds, 500)));
                }
            return true;
        }

        public void Dispose()
        {
            if (!P.HasExited) P.Kill(entireProcessTree: true);
            P.Dispose();
        }
    }

    private static bool WaitForFileText(string path, string s, Process p, TimeSpan timeout)
    {
        // The child writes its serial console to a file; watch it (bounded) until the text shows or the child dies.
        using var w = new FileSystemWatcher(Path.GetDirectoryName(path)!, Path.GetFileName(path)) { EnableRaisingEvents = true };
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline && !p.HasExited)
        {
            if (File.Exists(path) && File.ReadAllText(path).Contains(s)) return true;
            w.WaitForChanged(WatcherChangeTypes.Changed | WatcherChangeTypes.Created, 500);
        }
        return File.Exists(path) && File.ReadAllText(path).Contains(s);
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    [DllImport("libc", SetLastError = true)]
    private static extern int open(string path, int flags);

    [SkippableTheory]
    [InlineData(15, "SIGTERM")]
    [InlineData(2, "SIGINT")]
    [InlineData(1, "SIGHUP")]
    public void A_signal_stops_the_vm_in_order_and_leaves_a_clean_qcow2(int signo, string name)
    {
        // A non-interactive shell starts background jobs (`cmd &`) with SIGINT and SIGQUIT ignored; the child VMM
        // inherits that, and .NET (like any Unix program) keeps an inherited ignore for those two signals.
        Skip.If(InheritedIgnored(signo), $"{name} is ignored in this test process (started in the background by a shell), so the VMM inherits the ignore");
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 100_000);
        string disk = dir["disk.qcow2"];
        DiskImage.Create(disk, "qcow2", 64L << 20);
        string serial = dir["serial.txt"];
        using var child = new Child("run", "--kernel", kernel, "--memory", "16M", "--accel", "emu", "--serial", $"file:{serial}",
            "--disk", disk);
        Assert.True(WaitForFileText(serial, "B", child.P, Timeout), "the guest never ran: " + child.Err);
        Assert.True(Qcow2Dirty(disk), "an image open for writing carries the dirty bit");
        Assert.Equal(0, kill(child.P.Id, signo));
        Assert.True(child.P.WaitForExit(Timeout), "dirigent did not stop after " + name);
        child.P.WaitForExit();
        Assert.Equal(128 + signo, child.P.ExitCode);
        Assert.Contains($"dirigent: stopped by {name}", child.Err);
        Assert.DoesNotContain("   at ", child.Err); // no .NET stack trace
        Assert.False(Qcow2Dirty(disk), "the image was not closed in order (dirty bit still set)");
        var (rc, o, e) = QemuImg.Run("check", disk);
        Assert.True(rc == 0, $"qemu-img check: {o}{e}");
    }

    /// <summary>Whether this process ignores <paramref name="signo"/> (SigIgn in /proc/self/status).</summary>
    private static bool InheritedIgnored(int signo)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("SigIgn:", StringComparison.Ordinal))
                return ((Convert.ToUInt64(line[7..].Trim(), 16) >> (signo - 1)) & 1) != 0;
        return false;
    }

    private static bool Qcow2Dirty(string path)
    {
        // open(2) directly: the running VMM holds .NET's advisory lock on the image.
        int fd = open(path, 0);
        Assert.True(fd >= 0, $"cannot open {path}");
        using var h = new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true);
        var b = new byte[80];
        Assert.Equal(80, RandomAccess.Read(h, b, 0));
        return (BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(72)) & 1) != 0;
    }

    [Fact]
    public void A_vm_migrates_into_an_incoming_process_and_finishes_there()
    {
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 200);
        var straight = SnapshotTests.Straight(kernel);
        string sock = dir["in.sock"], serial = dir["target-serial.txt"];
        using var child = new Child("run", "--incoming", $"unix:{sock}", "--serial", $"file:{serial}");
        Assert.True(child.WaitForErr("waiting for an incoming migration", Timeout), child.Err);
        using var source = Vm.Create(TinyGuest.Spec(kernel), TextWriter.Null);
        using var cap = new ConsoleCapture(source);
        source.Start();
        Assert.True(cap.WaitFor("C", Timeout));
        source.Migrate($"unix:{sock}");
        Assert.Equal(VmExitKind.Migrated, source.ExitReason!.Kind);
        Assert.True(child.P.WaitForExit(Timeout), "target did not finish: " + child.Err);
        child.P.WaitForExit();
        Assert.Equal((straight.Exit << 1) | 1, child.P.ExitCode);
        Assert.Equal(straight.Out, cap.Text + File.ReadAllText(serial, System.Text.Encoding.Latin1));
    }
}
