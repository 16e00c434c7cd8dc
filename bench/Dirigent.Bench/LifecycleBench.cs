using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Vmm;

namespace Dirigent.Bench;

/// <summary>
/// VM lifecycle operations on the default guest (software CPU, 512 MiB), side by side with QEMU TCG running the same
/// kernel, initramfs and script: pause/resume latency, snapshot save time and size, restore until the vCPU runs
/// again, and live migration over loopback TCP (total time, downtime, rounds, pages), for an idle guest and for one
/// that keeps rewriting 64 MiB of tmpfs. Published anchors (Firecracker's snapshot restore, QEMU's default downtime
/// limit) are printed beside the figures they compare with.
/// Usage: dotnet run -c Release --project bench/Dirigent.Bench -- lifecycle [--quick] [--no-qemu] [--no-busy]
/// </summary>
public static partial class LifecycleBench
{
    /// <summary>The guest idles in `sleep`: its vCPU spends nearly all its time halted.</summary>
    private const string IdleScript = "echo READY; while true; do sleep 1; done";

    /// <summary>A guest that keeps dirtying memory: 64 MiB written to tmpfs over and over (each pass frees and
    /// reallocates the page-cache pages), the case where pre-copy has to chase the guest.</summary>
    private const string BusyScript =
        "(while true; do dd if=/dev/zero of=/tmp/f bs=1M count=64 2>/dev/null; done) & echo READY; while true; do sleep 1; done";

    private const double Mib = 1024 * 1024;

    public static int Run(string? qemu, bool quick, bool busy)
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        int pauses = quick ? 7 : 20, saves = quick ? 2 : 5, restores = quick ? 2 : 5;
        string work = Path.Combine(Path.GetTempPath(), $"dirigent-lifecycle-{Environment.ProcessId}");
        Directory.CreateDirectory(work);
        Console.WriteLine($"guest: {img.KernelVersion}, 512 MiB, 1 vCPU; Dirigent on the software CPU, QEMU with -accel tcg; " +
                          $"{pauses} pause/resume pairs, {saves} snapshots, {restores} restores (medians)");
        try
        {
            var d = new Figures();
            var q = new Figures();
            Dirigent(img, IdleScript, work, "idle", pauses, saves, restores, d);
            if (qemu != null) Safe("qemu idle", () => Qemu(qemu, img, IdleScript, work, "idle", pauses, saves, restores, q));
            if (busy)
            {
                Dirigent(img, BusyScript, work, "busy", 0, Math.Min(saves, 3), restores, d);
                if (qemu != null) Safe("qemu busy", () => Qemu(qemu, img, BusyScript, work, "busy", 0, Math.Min(saves, 3), restores, q));
            }
            Print(d, q, busy);
        }
        finally
        {
            try { Directory.Delete(work, recursive: true); } catch (IOException) { }
        }
        return 0;
    }

    private static void Safe(string what, Action a)
    {
        try { a(); }
        catch (Exception e) { Console.WriteLine($"{what}: failed, its figures are n/a: {e.Message}"); }
    }

    /// <summary>Figures by key ("idle.pause" ...); a missing key prints as n/a.</summary>
    private sealed class Figures : Dictionary<string, double>;

    private static void Print(Figures d, Figures q, bool busy)
    {
        Console.WriteLine();
        Console.WriteLine($"{"metric",-44} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",13}  anchor / note");
        void R(string name, string key, string fmt, string note = "")
        {
            double? a = d.TryGetValue(key, out var x) ? x : null, b = q.TryGetValue(key, out var y) ? y : null;
            string S(double? v) => v.HasValue ? v.Value.ToString(fmt, CultureInfo.InvariantCulture) : "n/a";
            string ratio = a.HasValue && b is > 0 ? (a.Value / b.Value).ToString("F2", CultureInfo.InvariantCulture) + "x" : "-";
            Console.WriteLine($"{name,-44} {S(a),10} {S(b),10} {ratio,13}  {note}");
        }
        foreach (var kind in busy ? new[] { "idle", "busy" } : new[] { "idle" })
        {
            Console.WriteLine($"-- {kind} guest");
            if (kind == "idle")
            {
                R("pause latency, median (ms)", "idle.pause", "F3", "qemu: HMP `stop` round trip");
                R("resume latency, median (ms)", "idle.resume", "F3", "qemu: HMP `cont` round trip");
            }
            R("snapshot save, median (ms)", $"{kind}.save", "F1", "qemu: stop + migrate to exec:cat > file + cont; dirigent fsyncs, qemu not");
            R("snapshot size, apparent (MiB)", $"{kind}.size", "F1", "qemu: migration stream (zero pages as flags)");
            R("snapshot size, allocated on disk (MiB)", $"{kind}.alloc", "F1", "dirigent: sparse memory file");
            R("restore call (Vm.Restore + Start) (ms)", $"{kind}.restore", "F1", "qemu: migrate_incoming exec:cat + cont until `running`");
            R("restore to first instruction (ms)", $"{kind}.first", "F1",
                "Firecracker: < 8 ms on KVM" + (kind == "idle" ? "; idle vCPU waits in HLT for its next interrupt" : ""));
            R("live migration total (ms)", $"{kind}.mig.total", "F1", "loopback TCP; qemu max-bandwidth lifted");
            R("live migration downtime (ms)", $"{kind}.mig.down", "F1", "QEMU default limit: 300 ms; dirigent: pause until the target has restored the state and acked, qemu: source side");
            R("live migration rounds", $"{kind}.mig.rounds", "F0", "qemu: dirty sync count");
            R("live migration pages sent (4 KiB)", $"{kind}.mig.pages", "F0", "qemu: normal pages (zero pages as flags)");
            R("live migration bytes sent (MiB)", $"{kind}.mig.bytes", "F1", "");
        }
    }

    private static double Median(List<double> xs)
    {
        var s = xs.OrderBy(x => x).ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }

    private static double Ms(long startTimestamp) => Stopwatch.GetElapsedTime(startTimestamp).TotalMilliseconds;

    /// <summary>Apparent and allocated bytes of a directory's files (what `du -b` and `du -B1` print).</summary>
    private static (long apparent, long allocated) DiskUsage(string dir)
    {
        long Du(params string[] args)
        {
            var psi = new ProcessStartInfo("du") { RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in args) psi.ArgumentList.Add(a);
            psi.ArgumentList.Add(dir);
            using var p = Process.Start(psi)!;
            string o = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return long.Parse(o.Split('\t')[0], CultureInfo.InvariantCulture);
        }
        return (Du("-s", "-b"), Du("-s", "-B1"));
    }

    private static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    // ------------------------------------------------------------------ Dirigent

    /// <summary>Collects console output and signals when the guest has printed READY on a line of its own.</summary>
    private sealed class ReadyWatch
    {
        private readonly ConsoleLines _lines;
        public readonly ManualResetEventSlim Ready = new();
        public ReadyWatch() => _lines = new ConsoleLines(line => { if (line == "READY") Ready.Set(); });
        public void Feed(string s)
        {
            lock (_lines) _lines.Add(s);
        }
        public void Feed(byte b)
        {
            lock (_lines) _lines.Add(b);
        }
        public string Tail { get { lock (_lines) return _lines.Tail(1500); } }
        public void Wait(string who, TimeSpan timeout)
        {
            if (!Ready.Wait(timeout)) throw new TimeoutException($"{who}: no READY from the guest within {timeout.TotalSeconds} s:\n{Tail}");
        }
    }

    private static VmSpec Spec(GuestImage img, string script) => new()
    {
        Kernel = img.Kernel, Initrds = [img.Initramfs], MemoryBytes = 512UL << 20, Accel = AccelKind.Emu,
        Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
    };

    private static void Dirigent(GuestImage img, string script, string work, string kind, int pauses, int saves, int restores, Figures f)
    {
        var boot = Stopwatch.StartNew();
        var vm = Vm.Create(Spec(img, script), TextWriter.Null);
        try
        {
            var w = new ReadyWatch();
            using (vm.Console.Subscribe(w.Feed, replay: true))
            {
                vm.Start();
                w.Wait($"dirigent {kind}", TimeSpan.FromMinutes(4));
            }
            Console.WriteLine($"dirigent {kind}: booted to READY in {boot.Elapsed.TotalSeconds:F1} s");
            Thread.Sleep(500); // let the script reach its loop

            if (pauses > 0)
            {
                var p = new List<double>();
                var r = new List<double>();
                for (int i = 0; i < pauses; i++)
                {
                    long t = Stopwatch.GetTimestamp();
                    vm.Pause();
                    p.Add(Ms(t));
                    t = Stopwatch.GetTimestamp();
                    vm.Resume();
                    r.Add(Ms(t));
                    Thread.Sleep(20);
                }
                f[$"{kind}.pause"] = Median(p);
                f[$"{kind}.resume"] = Median(r);
            }

            var saveTimes = new List<double>();
            string? snap = null;
            for (int i = 0; i < saves; i++)
            {
                string dir = Path.Combine(work, $"dirigent-{kind}-snap{i}");
                long t = Stopwatch.GetTimestamp();
                vm.SaveSnapshot(dir);
                saveTimes.Add(Ms(t));
                if (snap != null) Directory.Delete(snap, recursive: true); // keep one 512 MiB file at a time
                snap = dir;
                Thread.Sleep(200);
            }
            f[$"{kind}.save"] = Median(saveTimes);
            var (app, alloc) = DiskUsage(snap!);
            f[$"{kind}.size"] = app / Mib;
            f[$"{kind}.alloc"] = alloc / Mib;

            var callTimes = new List<double>();
            var firstTimes = new List<double>();
            for (int i = 0; i < restores; i++)
            {
                long t = Stopwatch.GetTimestamp();
                var rvm = Vm.Restore(snap!, AccelKind.Emu, TextWriter.Null);
                try
                {
                    ulong before = rvm.VcpuList[0].InstructionsRetired;
                    rvm.Start();
                    callTimes.Add(Ms(t));
                    // The vCPU counts retired instructions per block: the first growth is the guest running again.
                    while (rvm.VcpuList[0].InstructionsRetired == before)
                    {
                        if (Ms(t) > 10_000) throw new TimeoutException($"dirigent {kind}: the restored vCPU ran nothing in 10 s");
                        Thread.Yield();
                    }
                    firstTimes.Add(Ms(t));
                }
                finally { rvm.Dispose(); }
            }
            f[$"{kind}.restore"] = Median(callTimes);
            f[$"{kind}.first"] = Median(firstTimes);
            Directory.Delete(snap!, recursive: true);

            // Live migration to a second VM in this process over loopback TCP.
            string uri = $"tcp:127.0.0.1:{FreePort()}";
            using var listening = new ManualResetEventSlim();
            using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(3));
            var target = Task.Factory.StartNew(() => Vm.Incoming(uri, AccelKind.Emu, TextWriter.Null, cts.Token, _ => listening.Set()),
                TaskCreationOptions.LongRunning);
            if (!listening.Wait(TimeSpan.FromSeconds(30))) throw new TimeoutException("the migration target never listened");
            vm.Migrate(uri);
            var st = vm.LastMigration!;
            using (var tvm = target.GetAwaiter().GetResult())
            {
                tvm.Start();
                f[$"{kind}.mig.total"] = st.TotalMs;
                f[$"{kind}.mig.down"] = st.DowntimeMs;
                f[$"{kind}.mig.rounds"] = st.Rounds;
                f[$"{kind}.mig.pages"] = st.PagesSent;
                f[$"{kind}.mig.bytes"] = st.BytesSent / Mib;
                Thread.Sleep(200);
                if (tvm.State != VmState.Running) throw new InvalidOperationException($"the migrated VM is {tvm.State} ({tvm.ExitReason})");
            }
            Console.WriteLine($"dirigent {kind}: done in {boot.Elapsed.TotalSeconds:F1} s");
        }
        finally { vm.Dispose(); }
    }

    // ------------------------------------------------------------------ QEMU

    /// <summary>A QEMU process on the default guest, its serial console on stdout and its human monitor (HMP) on a
    /// unix socket.</summary>
    private sealed class QemuVm : IDisposable
    {
        private readonly Process _p;
        private readonly Socket _mon;
        private readonly byte[] _buf = new byte[65536];
        public readonly ReadyWatch Watch = new();

        public QemuVm(string qemu, GuestImage img, string script, string work, string name, string? incoming)
        {
            string sock = Path.Combine(work, $"{name}.mon");
            var psi = new ProcessStartInfo(qemu)
            {
                RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
            };
            var args = new List<string> { "-M", "pc", "-accel", "tcg", "-m", "512", "-nodefaults", "-display", "none",
                "-serial", "stdio", "-monitor", $"unix:{sock},server=on,wait=off",
                "-kernel", img.Kernel, "-initrd", img.Initramfs,
                "-append", $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}" };
            if (incoming != null) args.AddRange(["-incoming", incoming]);
            foreach (var a in args) psi.ArgumentList.Add(a);
            _p = Process.Start(psi)!;
            _p.OutputDataReceived += (_, e) => { if (e.Data != null) Watch.Feed(e.Data + "\n"); };
            _p.ErrorDataReceived += (_, e) => { };
            _p.BeginOutputReadLine();
            _p.BeginErrorReadLine();
            _mon = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            var sw = Stopwatch.StartNew();
            while (true)
            {
                try { _mon.Connect(new UnixDomainSocketEndPoint(sock)); break; }
                catch (SocketException) when (sw.Elapsed < TimeSpan.FromSeconds(30) && !_p.HasExited) { Thread.Sleep(20); }
            }
            ReadPrompt();
        }

        private string ReadPrompt()
        {
            var sb = new StringBuilder();
            while (!sb.ToString().EndsWith("(qemu) ", StringComparison.Ordinal))
            {
                int n = _mon.Receive(_buf);
                if (n == 0) throw new IOException("the QEMU monitor closed");
                sb.Append(Encoding.UTF8.GetString(_buf, 0, n));
            }
            return sb.ToString();
        }

        /// <summary>Runs one HMP command and returns its output (the monitor answers once the command is done).</summary>
        public string Cmd(string c)
        {
            _mon.Send(Encoding.UTF8.GetBytes(c + "\n"));
            return ReadPrompt();
        }

        /// <summary>Polls `info migrate` until the migration completes (or fails).</summary>
        public string WaitMigration(TimeSpan timeout)
        {
            var sw = Stopwatch.StartNew();
            while (true)
            {
                string s = Cmd("info migrate");
                if (s.Contains("Migration status: completed")) return s;
                if (s.Contains("Migration status: failed") || s.Contains("Migration status: cancelled"))
                    throw new InvalidOperationException($"qemu migration failed:\n{s}");
                if (sw.Elapsed > timeout) throw new TimeoutException($"qemu migration still running after {timeout.TotalSeconds} s");
                Thread.Sleep(1);
            }
        }

        public void Dispose()
        {
            try { Cmd("quit"); } catch (Exception e) when (e is IOException or SocketException) { }
            _mon.Dispose();
            if (!_p.WaitForExit(5000)) _p.Kill();
            _p.Dispose();
        }
    }

    private static double Field(string info, string pattern)
    {
        var m = Regex.Match(info, pattern);
        if (!m.Success) throw new InvalidDataException($"`{pattern}` not in qemu's `info migrate`:\n{info}");
        return double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    private static void Qemu(string qemu, GuestImage img, string script, string work, string kind, int pauses, int saves, int restores, Figures f)
    {
        var boot = Stopwatch.StartNew();
        using var vm = new QemuVm(qemu, img, script, work, $"qemu-{kind}", incoming: null);
        vm.Watch.Wait($"qemu {kind}", TimeSpan.FromMinutes(4));
        Console.WriteLine($"qemu {kind}: booted to READY in {boot.Elapsed.TotalSeconds:F1} s");
        Thread.Sleep(500);
        // QEMU 7.x caps migration at 32 MiB/s by default (8.x: 128 MiB/s); Dirigent has no cap, so lift it for a
        // like-for-like figure. The downtime limit stays at its default (300 ms).
        vm.Cmd("migrate_set_parameter max-bandwidth 100G");

        if (pauses > 0)
        {
            var p = new List<double>();
            var r = new List<double>();
            for (int i = 0; i < pauses; i++)
            {
                long t = Stopwatch.GetTimestamp();
                vm.Cmd("stop");
                p.Add(Ms(t));
                t = Stopwatch.GetTimestamp();
                vm.Cmd("cont");
                r.Add(Ms(t));
                Thread.Sleep(20);
            }
            f[$"{kind}.pause"] = Median(p);
            f[$"{kind}.resume"] = Median(r);
        }

        // Snapshot: `savevm` needs a qcow2 disk (this guest has none), so the equivalent of Dirigent's save is the
        // migration stream of the stopped VM into a file, then `cont`.
        var saveTimes = new List<double>();
        string? file = null;
        for (int i = 0; i < saves; i++)
        {
            string dir = Path.Combine(work, $"qemu-{kind}-snap{i}");
            Directory.CreateDirectory(dir);
            string path = Path.Combine(dir, "vmstate");
            long t = Stopwatch.GetTimestamp();
            vm.Cmd("stop");
            vm.Cmd($"migrate -d \"exec:cat > {path}\"");
            vm.WaitMigration(TimeSpan.FromMinutes(2));
            vm.Cmd("cont");
            saveTimes.Add(Ms(t));
            if (file != null) Directory.Delete(Path.GetDirectoryName(file)!, recursive: true);
            file = path;
            Thread.Sleep(200);
        }
        f[$"{kind}.save"] = Median(saveTimes);
        var (app, alloc) = DiskUsage(Path.GetDirectoryName(file!)!);
        f[$"{kind}.size"] = app / Mib;
        f[$"{kind}.alloc"] = alloc / Mib;

        // Restore: a QEMU waiting with -incoming defer loads the stream (polled with `info status`). The first guest
        // instruction is not observable from outside QEMU, so its figure stays n/a.
        var callTimes = new List<double>();
        for (int i = 0; i < restores; i++)
        {
            using var rvm = new QemuVm(qemu, img, script, work, $"qemu-{kind}-restore{i}", incoming: "defer");
            long t = Stopwatch.GetTimestamp();
            rvm.Cmd($"migrate_incoming \"exec:cat {file}\"");
            // The stream carries the source's run state (it was stopped when saved), so the loaded VM stays paused
            // until `cont`, as Dirigent's restored VM waits for Start.
            string status;
            while ((status = rvm.Cmd("info status")).Contains("inmigrate"))
            {
                if (Ms(t) > 60_000) throw new TimeoutException($"qemu restore still loading after 60 s: {status}");
                Thread.Sleep(1);
            }
            if (!status.Contains("VM status: running")) status = rvm.Cmd("cont") + rvm.Cmd("info status");
            if (!status.Contains("VM status: running")) throw new InvalidOperationException($"qemu restore did not run: {status}");
            callTimes.Add(Ms(t));
        }
        f[$"{kind}.restore"] = Median(callTimes);
        Directory.Delete(Path.GetDirectoryName(file!)!, recursive: true);

        // Live migration to a second QEMU over loopback TCP.
        int port = FreePort();
        using var target = new QemuVm(qemu, img, script, work, $"qemu-{kind}-target", incoming: $"tcp:127.0.0.1:{port}");
        vm.Cmd($"migrate -d tcp:127.0.0.1:{port}");
        string info = vm.WaitMigration(TimeSpan.FromMinutes(3));
        f[$"{kind}.mig.total"] = Field(info, @"total time: (\d+) ms");
        f[$"{kind}.mig.down"] = Field(info, @"downtime: (\d+) ms");
        f[$"{kind}.mig.rounds"] = Field(info, @"dirty sync count: (\d+)");
        f[$"{kind}.mig.pages"] = Field(info, @"normal: (\d+) pages");
        f[$"{kind}.mig.bytes"] = Field(info, @"transferred ram: (\d+) kbytes") / 1024;
        Console.WriteLine($"qemu {kind}: done in {boot.Elapsed.TotalSeconds:F1} s");
    }
}
