using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Dirigent.Vmm;

namespace Dirigent.Cli.Jail;

/// <summary>
/// `dirigent run --jail`: this process stays outside as the jail's keeper. It builds the jail's directory and
/// launcher script, starts `setpriv --pdeathsig KILL unshare --mount --pid --ipc --uts [--net] --fork --kill-child
/// sh launch.sh dirigent run ... --in-jail`, forwards SIGTERM/SIGINT/SIGHUP to the jailed VMM, and when it ends
/// turns a seccomp kill (SIGSYS) into one line, hands on the exit record, and removes the jail.
/// Namespaces are made by util-linux before the VMM's image starts because the .NET runtime is multi-threaded from
/// its first instruction, and unshare(2) of a mount namespace is per thread (and refused for a user namespace).
/// </summary>
internal static class JailLauncher
{
    private const int SIGSYS = 31;

    /// <summary>Checks that a jail can be made here; null, or one line (status 6: not available on this host).</summary>
    public static string? HostProblem()
    {
        if (!OperatingSystem.IsLinux()) return "--jail needs Linux";
        if (!JailNative.IsRoot) return "--jail needs root (to make namespaces, mount the jail and switch to the jail user)";
        foreach (string t in JailPlan.Tools)
            if (JailPlan.FindTool(t) == null) return $"--jail needs {t} (util-linux / coreutils), which is not installed";
        return Seccomp.Probe() is { } s ? $"--jail: {s}" : null;
    }

    /// <param name="innerOptions">The run options to hand to the jailed VMM, without --jail*, --api-socket,
    /// --exit-file and --detach (the launcher sets those it needs).</param>
    public static int Run(JailConfig config, VmSpec cfg, RunOptions opts, List<string> innerOptions, IEnumerable<string> fwCfgOptions, TextWriter err)
    {
        if (!OperatingSystem.IsLinux() || HostProblem() is not null) return Fail(err, opts, HostProblem() ?? "--jail needs Linux", ExitCodes.VmmFailure);
        JailPlan plan;
        try
        {
            // The default guest is built (or found) here, outside: inside there is neither apt nor the cache. A restored
            // or incoming VM brings its own spec.
            bool resumed = opts.RestoreDir != null || opts.Incoming != null;
            bool defaultGuest = !resumed && cfg.Kernel == null && cfg.Firmware == FirmwareKind.None;
            if (!resumed && VmLauncher.ResolveDefaultImage(cfg, err) is { } imageError) throw new FormatException(imageError);
            if (defaultGuest)
            {
                innerOptions.AddRange(["--kernel", cfg.Kernel!, "--initrd", string.Join(',', cfg.Initrds)]);
                if (!innerOptions.Contains("--append")) innerOptions.AddRange(["--append", cfg.Append]);
            }
            plan = MakePlan(config, cfg, opts, fwCfgOptions);
        }
        catch (FormatException e) { return Fail(err, opts, e.Message, ExitCodes.BadInput); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Fail(err, opts, $"--jail: {e.Message}", ExitCodes.VmmFailure);
        }
        try { return RunJailed(plan, cfg, opts, innerOptions, err); }
        finally { Cleanup(plan, opts); }
    }

    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    private static JailPlan MakePlan(JailConfig config, VmSpec cfg, RunOptions opts, IEnumerable<string> fwCfgOptions)
    {
        string dir;
        bool created = false;
        if (config.Dir != null)
        {
            dir = Path.GetFullPath(config.Dir);
            if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
                throw new FormatException($"--jail={dir}: the directory must be empty or absent");
            created = !Directory.Exists(dir);
            Directory.CreateDirectory(dir);
        }
        else
        {
            // /run: root's, tmpfs, traversable by everyone (the VMM's files in DIR/run are reached through it).
            Directory.CreateDirectory("/run/dirigent/jail");
            dir = Path.Combine("/run/dirigent/jail", $"vm-{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}");
            Directory.CreateDirectory(dir);
            created = true;
        }
        try { return FillPlan(config, cfg, opts, fwCfgOptions, dir, created); }
        catch when (created)
        {
            // Nothing is mounted yet: what was made here is plain files and directories.
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    private static JailPlan FillPlan(JailConfig config, VmSpec cfg, RunOptions opts, IEnumerable<string> fwCfgOptions, string dir, bool created)
    {
        File.SetUnixFileMode(dir, (UnixFileMode)0b111_101_101);
        // The network namespace is cut only when the VM surely has no NIC needing the host's: a restored VM's NICs
        // are in its snapshot; an incoming VM's are known only once its stream arrives (and a tcp: migration port
        // must be reachable from the host), so an incoming VMM keeps the host's network namespace.
        VmSpec spec = cfg;
        if (opts.RestoreDir != null)
            try { spec = Vm.ReadSnapshotSpec(Path.GetFullPath(opts.RestoreDir)); }
            catch (VmException e) { throw new FormatException(e.Message); }
        var plan = new JailPlan
        {
            Config = config, Dir = dir, DirCreated = created,
            NewNetNamespace = opts.Incoming == null && spec.Nics.Count == 0 && !config.KeepHostNetwork,
        };
        Directory.CreateDirectory(plan.RootDir);
        Directory.CreateDirectory(plan.RunDir);
        File.SetUnixFileMode(plan.RunDir, (UnixFileMode)0b111_000_000);
        JailNative.Chown(plan.RunDir, config.Uid, config.Gid);
        if (opts.RestoreDir != null) plan.AddSnapshot(opts.RestoreDir);
        else if (opts.Incoming == null) plan.AddVmFiles(cfg, fwCfgOptions);
        else plan.AddVmFiles(new VmSpec { Accel = cfg.Accel, Firmware = FirmwareKind.None }, []); // runtime, libraries, devices
        foreach (string b in config.ExtraBinds) plan.AddExtra(b);
        if (opts.SystemMap != null) plan.AddInputFile(opts.SystemMap, "--system-map");
        if (opts.ConsoleLog != null) plan.AddOutputFile(opts.ConsoleLog);
        if (cfg.Serial.StartsWith("file:", StringComparison.Ordinal)) plan.AddOutputFile(cfg.Serial[5..]);
        File.WriteAllText(plan.ScriptPath, plan.Script());
        return plan;
    }

    private static int RunJailed(JailPlan plan, VmSpec cfg, RunOptions opts, List<string> innerOptions, TextWriter err)
    {
        // The API socket is made inside (DIR/run/api.sock); the path asked for becomes a link to it (connect(2)
        // follows links), so clients and the daemon use the path they know.
        if (opts.ApiSocket != null)
        {
            string api = Path.GetFullPath(opts.ApiSocket);
            if (JailNative.TypeOf(api) is { } type)
            {
                // A stale socket or link from an earlier run goes, as ApiHost does with a stale socket; anything else stays.
                if (type is not (JailNative.S_IFSOCK or JailNative.S_IFLNK))
                    return Fail(err, opts, $"--api-socket {api}: a file that is not a socket is in the way", ExitCodes.BadInput);
                File.Delete(api);
            }
            File.CreateSymbolicLink(api, plan.HostApiSocket);
        }
        string? innerIncoming = opts.Incoming;
        string? incomingLink = null;
        if (opts.Incoming is { } inc && inc.StartsWith("unix:", StringComparison.Ordinal))
        {
            // As the API socket: the VMM listens inside, the host path is a link to it.
            incomingLink = Path.GetFullPath(inc[5..]);
            if (JailNative.TypeOf(incomingLink) is { } type)
            {
                if (type is not (JailNative.S_IFSOCK or JailNative.S_IFLNK))
                    return Fail(err, opts, $"--incoming {incomingLink}: a file that is not a socket is in the way", ExitCodes.BadInput);
                File.Delete(incomingLink);
            }
            File.CreateSymbolicLink(incomingLink, plan.HostIncomingSocket);
            innerIncoming = "unix:" + JailPlan.InnerIncomingSocket;
        }
        try { return RunJailedVmm(plan, opts, innerOptions, innerIncoming, err); }
        finally
        {
            if (incomingLink != null && new FileInfo(incomingLink).LinkTarget == plan.HostIncomingSocket)
                try { File.Delete(incomingLink); } catch (IOException) { }
        }
    }

    private static int RunJailedVmm(JailPlan plan, RunOptions opts, List<string> innerOptions, string? innerIncoming, TextWriter err)
    {

        var cmd = Dirigent.Daemon.Workers.WorkerCommand.Current();
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        // No core files from the launcher processes re-raising the VMM's SIGSYS.
        foreach (string a in (string[])["-c", "ulimit -c 0; exec \"$@\"", "dirigent-jail", JailPlan.FindTool("setpriv")!, "--pdeathsig", "KILL", "--",
                     JailPlan.FindTool("unshare")!])
            psi.ArgumentList.Add(a);
        foreach (string f in plan.UnshareFlags()) psi.ArgumentList.Add(f);
        foreach (string a in (string[])["--", "/bin/sh", plan.ScriptPath, cmd.Executable, .. cmd.PrefixArgs, "run"]) psi.ArgumentList.Add(a);
        foreach (string a in innerOptions) psi.ArgumentList.Add(a);
        if (opts.RestoreDir != null) { psi.ArgumentList.Add("--restore"); psi.ArgumentList.Add(Path.GetFullPath(opts.RestoreDir)); }
        if (innerIncoming != null) { psi.ArgumentList.Add("--incoming"); psi.ArgumentList.Add(innerIncoming); }
        if (opts.ApiSocket != null) { psi.ArgumentList.Add("--api-socket"); psi.ArgumentList.Add(JailPlan.InnerApiSocket); }
        psi.ArgumentList.Add("--exit-file");
        psi.ArgumentList.Add(JailPlan.InnerExitFile);
        psi.ArgumentList.Add("--in-jail");
        SetEnvironment(psi);

        using var proc = Process.Start(psi)!;
        int launcher = proc.Id;
        void Forward(PosixSignalContext ctx)
        {
            ctx.Cancel = true;
            if (VmmPid(launcher) is { } vmm) JailNative.Signal(vmm, PosixNumber(ctx.Signal));
        }
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Forward);
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, Forward);
        using var hup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, Forward);
        // The VMM's host PID, for the kernel log's seccomp record (found while it runs: it is the launcher's child).
        int? vmmPid = null;
        while (!proc.WaitForExit(50)) vmmPid ??= VmmPid(launcher);
        proc.WaitForExit();
        int rc = proc.ExitCode;

        // The VMM's own exit record (it wrote one unless it was killed) is the truth about its status.
        var record = ReadRecord(plan.HostExitFile);
        if (record != null)
        {
            if (opts.ExitFile != null) File.Copy(plan.HostExitFile, Path.GetFullPath(opts.ExitFile), overwrite: true);
            return rc;
        }
        if (rc == 128 + SIGSYS)
        {
            int? nr = vmmPid is { } v ? JailNative.DeniedSyscallFromKernelLog(v) : null;
            string call = nr is { } n ? $"{Seccomp.NameOf(n) ?? "syscall"} ({n})" : "a system call (its number is in the kernel's audit log, type=1326)";
            return Fail(err, opts, $"the jailed VMM was killed by seccomp (SIGSYS): {call} is not on its allow-list", ExitCodes.VmmFailure, "seccomp");
        }
        if (rc > 128)
            return Fail(err, opts, $"the jailed VMM was killed by signal {rc - 128}", ExitCodes.VmmFailure, "signal");
        // Status without a record: the launcher script or the runtime failed before the VM (its own message is above).
        return Fail(err, opts, $"the jail did not start the VMM (status {rc})", rc == 0 ? ExitCodes.VmmFailure : rc);
    }

    private static int PosixNumber(PosixSignal s) => s switch
    {
        PosixSignal.SIGHUP => 1,
        PosixSignal.SIGINT => 2,
        _ => 15,
    };

    /// <summary>
    /// A clean environment for the jail: the runtime's own settings, the DIRIGENT_* switches, the terminal type.
    /// HOME is the jail's /tmp; the runtime's diagnostics IPC (a socket in /tmp per process) is off.
    /// </summary>
    private static void SetEnvironment(ProcessStartInfo psi)
    {
        var keep = psi.Environment.Where(kv => kv.Key.StartsWith("DIRIGENT_", StringComparison.Ordinal) ||
            kv.Key.StartsWith("DOTNET_", StringComparison.Ordinal) || kv.Key is "TERM" or "PATH").ToList();
        psi.Environment.Clear();
        foreach (var kv in keep) psi.Environment[kv.Key] = kv.Value;
        psi.Environment["PATH"] ??= "/usr/sbin:/usr/bin:/sbin:/bin";
        psi.Environment["HOME"] = "/tmp";
        psi.Environment["DOTNET_EnableDiagnostics"] = "0";
        string runtimeDir = RuntimeEnvironment.GetRuntimeDirectory().TrimEnd('/');
        psi.Environment["DOTNET_ROOT"] = Path.GetFullPath(Path.Combine(runtimeDir, "..", "..", ".."));
    }

    /// <summary>The VMM's host PID: the only child of the unshare process (which is <paramref name="launcher"/>).</summary>
    public static int? VmmPid(int launcher)
    {
        foreach (string d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), NumberStyles.None, CultureInfo.InvariantCulture, out int pid)) continue;
            if (ParentOf(pid) == launcher) return pid;
        }
        return null;
    }

    /// <summary>/proc/PID/stat field 4 (the parent), or null when the process is gone.</summary>
    public static int? ParentOf(int pid)
    {
        string stat;
        try { stat = File.ReadAllText($"/proc/{pid}/stat"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        int close = stat.LastIndexOf(')');
        var f = stat[(close + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return f.Length > 1 && int.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out int ppid) ? ppid : null;
    }

    private static string? ReadRecord(string path)
    {
        try { return File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>One line, and the exit record the VMM could not write (it never ran, or it was killed).</summary>
    private static int Fail(TextWriter err, RunOptions opts, string message, int rc, string kind = "start_failed")
    {
        err.WriteLine($"dirigent run: {message}");
        if (opts.ExitFile != null)
            Worker.ExitFile.Write(opts.ExitFile, new Worker.ExitFile.Record("crashed", kind, message, rc), err);
        return rc;
    }

    /// <summary>
    /// Removes what the jail left on the host: the socket link, and the jail directory (its root/ is an empty mount
    /// point here: the mounts lived only in the VMM's namespace, gone with it).
    /// </summary>
    private static void Cleanup(JailPlan plan, RunOptions opts)
    {
        try
        {
            if (opts.ApiSocket != null && new FileInfo(opts.ApiSocket).LinkTarget == plan.HostApiSocket) File.Delete(opts.ApiSocket);
            if (plan.DirCreated) Directory.Delete(plan.Dir, recursive: true);
            else
            {
                Directory.Delete(plan.RootDir, recursive: true);
                Directory.Delete(plan.RunDir, recursive: true);
                File.Delete(plan.ScriptPath);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
