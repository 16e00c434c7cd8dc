using Dirigent.Accel.Emu;
using Dirigent.Accel.Emu.Core;
using Dirigent.Cli.Terminal;
using Dirigent.Images;
using Dirigent.Vmm;
using Dirigent.Vmm.Sandbox;

namespace Dirigent.Cli;

/// <summary>How `dirigent run` gets its VM and who else may drive it.</summary>
public sealed class RunOptions
{
    /// <summary>--restore DIR: resume a snapshot instead of booting.</summary>
    public string? RestoreDir;
    /// <summary>--accel given explicitly (overrides a snapshot's or incoming VM's accelerator).</summary>
    public AccelKind? AccelOverride;
    /// <summary>--incoming unix:PATH|tcp:HOST:PORT: wait for a live migration and run the VM it brings.</summary>
    public string? Incoming;
    /// <summary>--api-socket PATH: serve the per-VM HTTP API there.</summary>
    public string? ApiSocket;
    /// <summary>--console-log PATH: append every console output byte to this file.</summary>
    public string? ConsoleLog;
    /// <summary>--exit-file PATH: write how the VM ended there (JSON, atomically) just before returning.</summary>
    public string? ExitFile;
    /// <summary>Set (by the signal handler, before it cancels the run) to the signal that stops the VM: the run then
    /// ends with status 128+number and the exit file says kind "signal".</summary>
    public volatile StopSignal? Signal;
    /// <summary>--in-jail (set by the jail's launcher): load the seccomp allow-list just before the guest runs.</summary>
    public bool Seccomp;
    /// <summary>--trace syscalls[,...]: trace the guest's system calls from the first instruction.</summary>
    public TraceOption? Trace;
    /// <summary>--system-map FILE: the guest kernel's symbols (Linux awareness).</summary>
    public string? SystemMap;
    /// <summary>--sandbox DIR: disks on overlays in DIR, restricted network, start snapshot, change report at exit;
    /// a DIR that already holds a sandbox is reverted to its start and run again from there.</summary>
    public string? Sandbox;
    /// <summary>--record DIR: log every non-deterministic input of the run there (README "Record and replay").</summary>
    public string? RecordDir;
    /// <summary>--replay DIR: re-execute the recording in DIR with no devices live.</summary>
    public string? ReplayDir;
}

/// <summary>A signal that stopped the VM: its name (SIGTERM) and number (15).</summary>
public sealed record StopSignal(string Name, int Number);

/// <summary>
/// `dirigent run`: builds a <see cref="Vm"/> (booted, restored or received), connects its serial console to the
/// terminal or a file, serves its API socket, runs it to its end and turns that into the exit status. Exit codes,
/// terminal handling and environment variables live here, not in the VM.
/// </summary>
public static class VmLauncher
{
    /// <summary>Where the default guest image is cached (DIRIGENT_CACHE, else ~/.cache/dirigent).</summary>
    public static string CacheDir => AccelSelector.CacheDir;

    /// <summary>
    /// The default guest's kernel command line: serial console; a panic powers off at once; and no crypto self-tests
    /// at boot (RSA test vectors are ~60% of the stock kernel's boot time on the software CPU). --append replaces it.
    /// </summary>
    public const string DefaultAppend = "console=ttyS0 panic=-1 cryptomgr.notests";

    /// <summary>
    /// A terminal stdin as a plain file stream: .NET's console stream re-applies its own terminal settings around
    /// each read, which would undo the raw mode the serial console needs.
    /// </summary>
    private static Stream RawStdin() =>
        new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, ownsHandle: false), FileAccess.Read, 1);

    /// <summary>Fills in the default guest (kernel, initramfs, command line) when no kernel was given.</summary>
    public static string? ResolveDefaultImage(VmSpec cfg, TextWriter err)
    {
        if (cfg.Kernel != null || cfg.Firmware != FirmwareKind.None) return null;
        try
        {
            var img = DefaultImage.EnsureBuilt(CacheDir, m => err.WriteLine($"dirigent: {m}"));
            cfg.Kernel = img.Kernel;
            if (cfg.Initrds.Count == 0) cfg.Initrds = [img.Initramfs];
            if (cfg.Append.Length == 0) cfg.Append = DefaultAppend;
            return null;
        }
        catch (ImageBuildException e) { return $"cannot build the default guest image: {e.Message}"; }
    }

    /// <summary>
    /// --system-map and --trace: loads the kernel's symbols (for the default guest, the System.map kept beside its
    /// kernel, fetched once) and starts the trace. Returns a one-line error, or null.
    /// </summary>
    private static string? SetUpIntrospection(Vm vm, VmSpec cfg, RunOptions opts, TextWriter err)
    {
        try
        {
            string? map = opts.SystemMap;
            bool defaultKernel = cfg.Kernel != null &&
                Path.GetFullPath(cfg.Kernel) == Path.GetFullPath(Path.Combine(CacheDir, DefaultImage.KernelFile));
            // The default guest with its System.map already fetched (a daemon's workers; a jail shows it beside the
            // kernel, at the same path, while the jail user's HOME names no cache): process names and lists through
            // the API work without naming the map.
            if (map == null && opts.Trace == null && cfg.Kernel != null && DefaultImage.CachedSystemMap(cfg.Kernel) is { } cached)
                vm.Introspection.UseSystemMapWhenNeeded(cached);
            if (map == null && opts.Trace != null && defaultKernel)
            {
                string version = File.ReadAllText(Path.Combine(CacheDir, DefaultImage.VersionFile)).Trim();
                map = DefaultImage.EnsureSystemMap(CacheDir, version, m => err.WriteLine($"dirigent: {m}"), out string why);
                if (map == null) err.WriteLine($"dirigent: --trace: no System.map ({why}); events will have no pid or comm");
            }
            if (map != null) vm.Introspection.LoadSystemMap(map);
            if (opts.Trace is { } t)
            {
                if (t.Output != null) vm.Introspection.StartSyscallTrace(t.Output, t.Process);
                else vm.Introspection.StartSyscallTrace(TextWriter.Synchronized(err), t.Process);
            }
            return null;
        }
        catch (VmException e) { return e.Message; }
        catch (IOException e) { return $"--trace: {e.Message}"; }
    }

    /// <summary>After a sandboxed run (the overlays closed): DIR/sandbox-report.json and one line about it.</summary>
    private static void WriteSandboxReport(string dir, TextWriter err)
    {
        try
        {
            var r = SandboxReport.Write(dir);
            var disks = r["disks"]!.AsArray();
            long clusters = disks.Sum(d => (long)d!["changed_clusters"]!);
            int files = disks.Sum(d => d!["files"] is System.Text.Json.Nodes.JsonArray f ? f.Count(x => x!["path"] != null) : 0);
            string net = r["network"] is { } n ? $", {(long)n["events"]!} network events (sinkhole log {n["log"]})" : "";
            err.WriteLine($"dirigent: sandbox report {Path.Combine(dir, VmSandbox.ReportFile)}: {clusters} changed clusters, {files} files and directories{net}");
        }
        catch (Exception e) when (e is VmException or IOException or UnauthorizedAccessException or Dirigent.Storage.BlockDeviceException)
        {
            err.WriteLine($"dirigent: sandbox report: {e.Message}");
        }
    }

    /// <param name="cancel">Stops the VM (as Ctrl-A x would): tests use it as a watchdog, the CLI for signals.</param>
    public static int Run(VmSpec cfg, TextWriter err, Stream? stdin = null, Stream? stdout = null, bool useTerminal = true,
        CancellationToken cancel = default, RunOptions? opts = null)
    {
        opts ??= new RunOptions();
        var outcome = new Outcome();
        int rc = RunCore(cfg, err, stdin, stdout, useTerminal, cancel, opts, outcome);
        if (opts.Signal is { } sig)
        {
            rc = 128 + sig.Number;
            outcome.Record = new Worker.ExitFile.Record("stopped", "signal", $"stopped by {sig.Name}", rc);
        }
        if (opts.ExitFile != null)
            Worker.ExitFile.Write(opts.ExitFile, outcome.Record ?? new Worker.ExitFile.Record("crashed", "vmm_error",
                outcome.Failure ?? "the VM did not run", rc) with { ExitCode = rc }, err);
        return rc;
    }

    /// <summary>What the exit file will say: the VM's end, or why it never ran.</summary>
    private sealed class Outcome
    {
        public Worker.ExitFile.Record? Record;
        public string? Failure;

        /// <summary>One line on the error log, remembered for the exit file (kind start_failed).</summary>
        public int Fail(TextWriter err, string message, int rc)
        {
            err.WriteLine($"dirigent run: {message}");
            Failure = message;
            Record = new Worker.ExitFile.Record("crashed", "start_failed", message, rc);
            return rc;
        }
    }

    private static int RunCore(VmSpec cfg, TextWriter err, Stream? stdin, Stream? stdout, bool useTerminal,
        CancellationToken cancel, RunOptions opts, Outcome outcome)
    {
        Vm vm;
        bool newSandbox = false;
        Dirigent.Vmm.Introspection.RunRecorder? recorder = null;
        try
        {
            if (opts.Sandbox != null)
            {
                if (VmSandbox.Exists(opts.Sandbox))
                {
                    // Run it again from the start: the overlays as they were then, and the start snapshot.
                    opts.RestoreDir = VmSandbox.Revert(opts.Sandbox);
                    err.WriteLine($"dirigent: sandbox {opts.Sandbox} reverted to its start");
                }
                else
                {
                    cfg = VmSandbox.Prepare(cfg, opts.Sandbox);
                    newSandbox = true;
                }
            }
            if (opts.ReplayDir != null)
            {
                // The VM comes with the recording; where its console goes is still this command line's choice.
                string serialChoice = cfg.Serial;
                recorder = Dirigent.Vmm.Introspection.RunRecorder.Replay(opts.ReplayDir, out cfg);
                cfg.Serial = serialChoice;
                vm = Vm.Create(cfg, err, recorder.ReplayDisks(), recorder.Session);
            }
            else if (opts.RestoreDir != null)
            {
                vm = Vm.Restore(opts.RestoreDir, opts.AccelOverride, err);
                // The sandbox's start snapshot: the VM can be reverted to it again while it runs.
                if (opts.Sandbox != null) VmSandbox.Attach(vm, opts.Sandbox);
            }
            else if (opts.Incoming != null)
                vm = Vm.Incoming(opts.Incoming, opts.AccelOverride, err, cancel, u => err.WriteLine($"dirigent: waiting for an incoming migration at {u}"));
            else
            {
                // Disks are opened before any image is built or downloaded (a bad --disk is the user's to fix first)
                // and handed to the VM, which owns them from then on.
                var disks = new List<Dirigent.Storage.IBlockDevice>();
                try
                {
                    foreach (var d in cfg.Disks) disks.Add(DiskFactory.Open(d));
                    if (ResolveDefaultImage(cfg, err) is { } imageError)
                        throw new VmException(imageError, badInput: true);
                }
                catch (Exception e) when (e is Dirigent.Storage.BlockDeviceException or VmException)
                {
                    foreach (var d in disks) d.Dispose();
                    return outcome.Fail(err, e.Message, ExitCodes.BadInput);
                }
                if (opts.RecordDir != null)
                {
                    try { recorder = Dirigent.Vmm.Introspection.RunRecorder.Record(opts.RecordDir, cfg); }
                    catch (Dirigent.Vmm.Introspection.RecordingException)
                    {
                        foreach (var d in disks) d.Dispose();
                        throw;
                    }
                }
                vm = Vm.Create(cfg, err, disks, recorder?.Session);
                if (newSandbox)
                {
                    try { VmSandbox.SaveStart(vm, opts.Sandbox!); }
                    catch { vm.Dispose(); throw; }
                }
            }
        }
        catch (Dirigent.Vmm.Introspection.RecordingException e)
        {
            recorder?.Dispose();
            return outcome.Fail(err, e.Message, ExitCodes.BadInput);
        }
        catch (VmException e)
        {
            recorder?.Dispose();
            return outcome.Fail(err, e.Message, e.BadInput ? ExitCodes.BadInput : ExitCodes.VmmFailure);
        }
        catch (OperationCanceledException)
        {
            return outcome.Fail(err, "cancelled while waiting for an incoming migration", ExitCodes.VmmFailure);
        }
        using var vmScope = vm;
        using var recorderScope = recorder;
        recorder?.Attach(vm);
        if (SetUpIntrospection(vm, cfg, opts, err) is { } introError)
            return outcome.Fail(err, introError, ExitCodes.BadInput);

        FileStream? serialFile = null;
        string serial = cfg.Serial;
        if (serial.StartsWith("file:", StringComparison.Ordinal))
        {
            try { serialFile = new FileStream(serial[5..], FileMode.Create, FileAccess.Write, FileShare.Read); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return outcome.Fail(err, $"cannot open serial output {serial[5..]}: {e.Message}", ExitCodes.BadInput);
            }
        }
        using var serialFileScope = serialFile;
        Worker.ConsoleLog? consoleLog = null;
        if (opts.ConsoleLog != null)
        {
            try { consoleLog = new Worker.ConsoleLog(opts.ConsoleLog, err); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return outcome.Fail(err, $"--console-log {opts.ConsoleLog}: {e.Message}", ExitCodes.BadInput);
            }
        }
        // Disposed after the VM (see the finally below), so the last bytes the guest wrote are in the file.
        using var consoleLogScope = consoleLog;
        using var consoleLogSub = consoleLog == null ? null : vm.Console.Subscribe(consoleLog.OnByte);
        IAsyncDisposable? api = null;
        if (opts.ApiSocket != null)
        {
            try { api = ApiHost.Start(vm, opts.ApiSocket, err); }
            catch (Exception e) when (e is IOException or InvalidOperationException or UnauthorizedAccessException or System.Net.Sockets.SocketException)
            {
                return outcome.Fail(err, $"--api-socket {opts.ApiSocket}: {e.Message}", ExitCodes.BadInput);
            }
        }

        // The terminal goes raw only now that nothing can fail before the VM runs (and the finally below restores it).
        ConsoleFrontend? frontend = null;
        BatchedWriter? serialOut = null; // --serial file:, drained before the file closes (serialFileScope)
        IDisposable? outputSub = null;
        if (serial == "stdio")
        {
            frontend = new ConsoleFrontend(stdout ?? System.Console.OpenStandardOutput(), useTerminal);
            outputSub = vm.Console.Subscribe(frontend.Write);
            frontend.Input = bytes => vm.Console.Write(bytes);
            frontend.Quit = vm.Stop;
            frontend.StartInput(stdin ?? (TerminalMode.IsTerminal(0) ? RawStdin() : System.Console.OpenStandardInput()));
        }
        else if (serialFile != null)
        {
            serialOut = new BatchedWriter(serialFile, "dirigent-serial-out");
            outputSub = vm.Console.Subscribe(serialOut.Write);
        }
        using var cancelReg = cancel.Register(() => { try { vm.Stop(); } catch (ObjectDisposedException) { } });
        using var profiler = Environment.GetEnvironmentVariable("DIRIGENT_PROFILE") is { Length: > 0 } profPath && vm.VcpuList[0] is Cpu soft
            ? new RipSampler(soft, profPath) : null;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            if (opts.Seccomp)
            {
                // After everything that opens, binds or starts threads (VM built, API listening, console wired),
                // before the first guest instruction. DIRIGENT_SECCOMP=log: log what is not allowed instead.
                if (Jail.Seccomp.Install(learn: Environment.GetEnvironmentVariable("DIRIGENT_SECCOMP") == "log") is { } seccompError)
                    return outcome.Fail(err, seccompError, ExitCodes.VmmFailure);
                // Tests: a call the filter denies, to see the kill and its report.
                if (Environment.GetEnvironmentVariable("DIRIGENT_TEST_SECCOMP_DENY") == "1") Jail.Seccomp.CallDenied();
            }
            vm.Start();
            var exit = vm.Completion.GetAwaiter().GetResult();
            // The guest's last output before any line of ours about how it ended.
            frontend?.Flush();
            serialOut?.Flush();
            if (recorder != null)
            {
                string line = recorder.Finish(out bool same);
                if (!same)
                {
                    err.WriteLine($"dirigent run {(recorder.Replaying ? "--replay" : "--record")}: {line}");
                    outcome.Record = Worker.ExitFile.Of(exit, vm.State, ExitCodes.VmmFailure);
                    return ExitCodes.VmmFailure;
                }
                err.WriteLine($"dirigent: {line}");
            }
            int rc = StatusOf(exit, err);
            outcome.Record = Worker.ExitFile.Of(exit, vm.State, rc);
            return rc;
        }
        finally
        {
            outputSub?.Dispose();
            if (api != null) api.DisposeAsync().AsTask().GetAwaiter().GetResult();
            // Disks flushed and closed in order before the terminal is given back.
            vm.Dispose();
            frontend?.Dispose();
            serialOut?.Dispose();
            if (opts.Sandbox != null) WriteSandboxReport(opts.Sandbox, err);
            if (Environment.GetEnvironmentVariable("DIRIGENT_STATS") == "1" && vm.VcpuList[0] is Cpu soft0 && vm.Accelerator is EmuAccelerator emu)
                PrintStats(err, soft0, emu, sw.Elapsed);
        }
    }

    /// <summary>The exit status for how the VM ended (see README's table), with one line for the bad endings.</summary>
    public static int StatusOf(VmExitReason exit, TextWriter err)
    {
        switch (exit.Kind)
        {
            case VmExitKind.PowerOff:
            case VmExitKind.Reset:
            case VmExitKind.StoppedByRequest:
            case VmExitKind.Migrated:
                return ExitCodes.Ok;
            case VmExitKind.DebugExit:
                return (exit.DebugExitValue << 1) | 1;
            case VmExitKind.TripleFault:
                err.WriteLine($"dirigent: guest shut down: {exit.Detail}");
                return ExitCodes.GuestDied;
            case VmExitKind.HaltedForever:
                err.WriteLine($"dirigent: guest halted with interrupts disabled and can never resume: {exit.Detail}");
                return ExitCodes.GuestDied;
            default:
                err.WriteLine($"dirigent: VMM failure: {exit.Detail}");
                return ExitCodes.VmmFailure;
        }
    }

    private static void PrintStats(TextWriter err, Cpu cpu, EmuAccelerator accel, TimeSpan elapsed)
    {
        double s = elapsed.TotalSeconds;
        err.WriteLine($"dirigent: stats: {cpu.InstructionsRetired:N0} instructions in {s:F2} s ({cpu.InstructionsRetired / s / 1e6:F1} MIPS), " +
            $"TLB misses {cpu.TlbMisses:N0}, blocks translated {accel.BlocksTranslated:N0}, invalidated {accel.BlocksInvalidated:N0}");
        var top = cpu.EventsDelivered.Select((n, v) => (n, v)).Where(x => x.n > 0).OrderByDescending(x => x.n).Take(8);
        err.WriteLine("dirigent: stats: events by vector: " + string.Join(", ", top.Select(x => $"{x.v:x2}={x.n:N0}")));
        // .NET's collections stop every thread, the vCPUs too, while VM time goes on.
        err.WriteLine($"dirigent: stats: .NET GC: {GC.CollectionCount(0)}/{GC.CollectionCount(1)}/{GC.CollectionCount(2)} collections (gen 0/1/2), " +
            $"{GC.GetTotalPauseDuration().TotalMilliseconds:F0} ms paused, {GC.GetTotalAllocatedBytes() / (1 << 20)} MiB allocated, " +
            $".NET JIT {System.Runtime.JitInfo.GetCompilationTime().TotalMilliseconds:F0} ms for {System.Runtime.JitInfo.GetCompiledMethodCount()} methods");
    }
}
