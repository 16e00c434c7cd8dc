using System.CommandLine;
using Dirigent.Vmm;

namespace Dirigent.Cli;

/// <summary>`dirigent run`: QEMU-like options for booting one VM.</summary>
internal static class RunCommand
{
    public static Command Create()
    {
        var kernel = new Option<string?>("--kernel") { Description = "Kernel: bzImage, vmlinux ELF or Multiboot image (default: the built-in Debian guest)" };
        var initrd = new Option<string?>("--initrd") { Description = "Initial ramdisk(s), comma-separated; Multiboot kernels get each as a module" };
        var append = new Option<string?>("--append") { Description = "Kernel command line" };
        var memory = new Option<string>("--memory", "-m") { Description = "Guest RAM: 512, 512M, 2G", DefaultValueFactory = _ => "512M" };
        var cpus = new Option<int>("--cpus", "-smp") { Description = "Number of vCPUs", DefaultValueFactory = _ => 1 };
        var accel = new Option<string>("--accel") { Description = "emu, kvm or auto", DefaultValueFactory = _ => "auto" };
        var serial = new Option<string>("--serial") { Description = "stdio, file:PATH or none", DefaultValueFactory = _ => "stdio" };
        var noReboot = new Option<bool>("--no-reboot") { Description = "Exit (status 0) when the guest reboots instead of rebooting it" };
        var disk = new Option<string[]>("--disk") { Description = "virtio-blk disk: PATH[,format=raw|qcow2][,readonly][,bps=N][,iops=N] (repeatable)", AllowMultipleArgumentsPerToken = false };
        var rng = new Option<bool>("--rng") { Description = "Attach a virtio-rng device fed from the host's random source" };
        var firmware = new Option<string?>("--firmware") { Description = "bios: boot the disks through SeaBIOS (default when --disk is given without --kernel); none: load the kernel directly" };
        var bootOrder = new Option<string?>("--boot-order") { Description = "Firmware boot order: c (the disks in --disk order) and/or diskN, comma-separated" };
        var fwCfg = new Option<string[]>("--fw-cfg", "-fw_cfg") { Description = "Firmware boot: a fw_cfg file for the guest, name=opt/NAME,string=TEXT or name=opt/NAME,file=PATH (repeatable; QEMU's -fw_cfg)", AllowMultipleArgumentsPerToken = false };
        var net = new Option<string[]>("--net") { Description = "virtio-net card on a TAP interface, tap=NAME[,mac=MAC][,netns=NS][,bps=N][,pps=N], or on user-mode networking without root (libslirp), user[,hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT]...[,mac=MAC][,bps=N][,pps=N] (repeatable)", AllowMultipleArgumentsPerToken = false };
        var restore = new Option<string?>("--restore") { Description = "Resume the snapshot in DIR instead of booting (its VM spec is used; --accel may change the accelerator)" };
        var incoming = new Option<string?>("--incoming") { Description = "Wait for a live migration at unix:PATH or tcp:HOST:PORT and run the VM it brings" };
        var apiSocket = new Option<string?>("--api-socket") { Description = "Serve the VM's HTTP API on this Unix socket (mode 0600)" };
        var consoleLog = new Option<string?>("--console-log") { Description = "Append all console output to this file (with any --serial)" };
        var exitFile = new Option<string?>("--exit-file") { Description = "When the VM ends, write how (JSON: state, kind, detail, exit_code, rip) to this file" };
        var detach = new Option<bool>("--detach") { Description = "Run in a session of its own (setsid): for workers started by the daemon" };
        var jail = new Option<string?>("--jail")
        {
            Description = "Run the VMM jailed: own mount/PID/IPC/UTS (and, without --net, network) namespaces, chrooted to DIR " +
                "(default: a new directory under /run/dirigent/jail), as --jail-user, no_new_privs, seccomp allow-list (needs root)",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var jailUser = new Option<string>("--jail-user") { Description = "UID[:GID] the jailed VMM runs as", DefaultValueFactory = _ => $"{Jail.JailConfig.DefaultId}:{Jail.JailConfig.DefaultId}" };
        var jailBind = new Option<string[]>("--jail-bind")
        {
            Description = "With --jail: also show this host file or directory inside the jail at its own path, writable (PATH) or read-only (PATH,ro); e.g. the disks of an --incoming VM (repeatable)",
            AllowMultipleArgumentsPerToken = false,
        };
        var jailHostNet = new Option<bool>("--jail-host-net")
        {
            Description = "With --jail: keep the host's network namespace even without --net, so the VMM can migrate out over TCP (daemon workers in cluster mode)",
        };
        // Set by the jail's launcher on the VMM it starts inside the jail: load the seccomp filter before the guest runs.
        var inJail = new Option<bool>("--in-jail") { Hidden = true };
        var trace = new Option<string?>("--trace") { Description = "Trace the guest's system calls as JSON lines: syscalls[,process=NAME][,output=FILE.jsonl] (software CPU; see README \"Introspection\")" };
        var systemMap = new Option<string?>("--system-map") { Description = "The guest kernel's System.map, for process names and ids in traces (default guest: fetched from Debian's -dbg package)" };
        var sandbox = new Option<string?>("--sandbox") { Description = "Sandbox profile in DIR: disks as qcow2 overlays there (bases never written), network none or --net user restricted (nothing leaves the host), a start snapshot, and DIR/sandbox-report.json of the changed clusters and files at exit; an existing DIR is reverted to its start and run again" };
        var record = new Option<string?>("--record") { Description = "Record the run into DIR (new or empty) for --replay: every device read, interrupt point and TSC value, counted in instructions (software CPU, one vCPU, --kernel; --disk, --net and --rng are recorded through what they write into guest RAM)" };
        var replay = new Option<string?>("--replay") { Description = "Re-execute the recording in DIR instruction for instruction with no devices live; checks the instruction count, memory and console output against it" };
        var cmd = new Command("run", "Boot a VM (default: Debian's stock cloud kernel with a busybox initramfs)")
        {
            kernel, initrd, append, memory, cpus, accel, serial, noReboot, disk, rng, firmware, bootOrder, fwCfg, net, restore, incoming, apiSocket,
            consoleLog, exitFile, detach, jail, jailUser, jailBind, jailHostNet, inJail, trace, systemMap, sandbox,
            record, replay,
        };
        // What a jailed VMM is given again inside: everything but the jail's own options and what the launcher sets.
        Option[] passedIn = [kernel, initrd, append, memory, cpus, accel, serial, noReboot, disk, rng, firmware, bootOrder, fwCfg, net, consoleLog];
        cmd.SetAction(r =>
        {
            var cfg = new VmSpec();
            // First, before any thread or file: a session of our own (already a group leader: detached enough).
            if (r.GetValue(detach)) Worker.Detach.NewSession();
            bool jailed = r.GetResult(jail) != null;
            if (r.GetValue(inJail)) Jail.JailNative.DieWithParent();
            var opts = new RunOptions
            {
                RestoreDir = r.GetValue(restore), Incoming = r.GetValue(incoming), ApiSocket = r.GetValue(apiSocket),
                ConsoleLog = r.GetValue(consoleLog), ExitFile = r.GetValue(exitFile), Seccomp = r.GetValue(inJail),
            };
            Jail.JailConfig? jailConfig = null;
            try
            {
                cfg.Kernel = r.GetValue(kernel);
                string? ird = r.GetValue(initrd);
                if (!string.IsNullOrEmpty(ird)) cfg.Initrds.AddRange(ird.Split(',', StringSplitOptions.RemoveEmptyEntries));
                cfg.Append = r.GetValue(append) ?? "";
                cfg.MemoryBytes = VmSpec.ParseMemory(r.GetValue(memory)!);
                cfg.Cpus = r.GetValue(cpus);
                if (cfg.Cpus is < 1 or > VmSpec.MaxCpus) throw new FormatException($"--cpus must be between 1 and {VmSpec.MaxCpus}, got {cfg.Cpus}");
                if (opts.RestoreDir != null && opts.Incoming != null)
                    throw new FormatException("--restore and --incoming exclude each other");
                if (opts.Incoming != null && !opts.Incoming.StartsWith("unix:", StringComparison.Ordinal) && !opts.Incoming.StartsWith("tcp:", StringComparison.Ordinal))
                    throw new FormatException($"--incoming must be unix:PATH or tcp:HOST:PORT, got '{opts.Incoming}'");
                if (opts.RestoreDir != null || opts.Incoming != null)
                {
                    // The VM's shape comes from the snapshot or the source; only these options still apply.
                    var given = new Option[] { kernel, initrd, append, memory, cpus, noReboot, disk, rng, firmware, bootOrder, fwCfg, net }
                        .Where(o => r.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
                    if (given.Count > 0)
                        throw new FormatException($"{string.Join(", ", given)} cannot be combined with {(opts.RestoreDir != null ? "--restore" : "--incoming")} (the VM's spec comes with it)");
                }
                if (r.GetResult(accel) is { Implicit: false }) opts.AccelOverride = ParseAccel(r.GetValue(accel)!);
                cfg.Accel = r.GetValue(accel) switch
                {
                    "auto" => AccelKind.Auto,
                    "emu" => AccelKind.Emu,
                    "kvm" => AccelKind.Kvm,
                    var a => throw new FormatException($"--accel must be emu, kvm or auto, got '{a}'"),
                };
                if (r.GetValue(trace) is { } traceSpec)
                {
                    opts.Trace = TraceOption.Parse(traceSpec);
                    // The hooks live in the software CPU: auto means emu here, and KVM cannot trace.
                    if (cfg.Accel == AccelKind.Kvm) throw new FormatException("--trace needs the software CPU (--accel emu)");
                    cfg.Accel = AccelKind.Emu;
                    if (opts.AccelOverride == AccelKind.Kvm) throw new FormatException("--trace needs the software CPU (--accel emu)");
                    opts.AccelOverride ??= opts.RestoreDir != null || opts.Incoming != null ? AccelKind.Emu : null;
                    if (jailed) throw new FormatException("--trace cannot be combined with --jail yet");
                }
                opts.SystemMap = r.GetValue(systemMap);
                if (r.GetValue(sandbox) is { } sb)
                {
                    if (sb.Length == 0) throw new FormatException("--sandbox needs a directory");
                    if (opts.RestoreDir != null || opts.Incoming != null) throw new FormatException("--sandbox cannot be combined with --restore or --incoming (an existing sandbox directory is resumed from its start)");
                    if (jailed) throw new FormatException("--sandbox cannot be combined with --jail yet");
                    opts.Sandbox = sb;
                    if (Dirigent.Vmm.Sandbox.VmSandbox.Exists(sb))
                    {
                        var given = new Option[] { kernel, initrd, append, memory, cpus, noReboot, disk, rng, firmware, bootOrder, fwCfg, net }
                            .Where(o => r.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
                        if (given.Count > 0)
                            throw new FormatException($"{string.Join(", ", given)} cannot be given for the existing sandbox {sb} (it runs again from its start snapshot)");
                    }
                }
                opts.RecordDir = r.GetValue(record);
                opts.ReplayDir = r.GetValue(replay);
                if (opts.RecordDir != null || opts.ReplayDir != null)
                {
                    string which = opts.RecordDir != null ? "--record" : "--replay";
                    if (opts.RecordDir != null && opts.ReplayDir != null) throw new FormatException("--record and --replay exclude each other");
                    if (opts.Sandbox != null) throw new FormatException($"{which} cannot be combined with --sandbox yet");
                    if (opts.RestoreDir != null || opts.Incoming != null) throw new FormatException($"{which} cannot be combined with --restore or --incoming");
                    if (jailed) throw new FormatException($"{which} cannot be combined with --jail yet");
                    if (cfg.Accel == AccelKind.Kvm) throw new FormatException($"{which} needs the software CPU (--accel emu): KVM does not count instructions exactly");
                    if (cfg.Cpus != 1) throw new FormatException($"{which} needs one vCPU (--cpus {cfg.Cpus}): the interleaving of vCPUs is not recorded");
                    if (opts.ReplayDir != null)
                    {
                        // The VM comes with the recording.
                        var given = new Option[] { kernel, initrd, append, memory, noReboot, disk, rng, firmware, bootOrder, fwCfg, net }
                            .Where(o => r.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
                        if (given.Count > 0) throw new FormatException($"{string.Join(", ", given)} cannot be combined with --replay (the VM's spec comes with the recording)");
                    }
                    cfg.Accel = AccelKind.Emu;
                }
                cfg.Serial = r.GetValue(serial)!;
                if (cfg.Serial is not ("stdio" or "none") && !cfg.Serial.StartsWith("file:", StringComparison.Ordinal))
                    throw new FormatException($"--serial must be stdio, file:PATH or none, got '{cfg.Serial}'");
                cfg.NoReboot = r.GetValue(noReboot);
                foreach (string spec in r.GetValue(net) ?? [])
                    cfg.Nics.Add(NicConfig.Parse(spec, cfg.Nics.Count));
                foreach (var d in r.GetValue(disk) ?? []) cfg.Disks.Add(VmSpec.ParseDisk(d));
                cfg.Rng = r.GetValue(rng);
                cfg.Firmware = r.GetValue(firmware) switch
                {
                    null => cfg.Kernel == null && cfg.Disks.Count > 0 ? FirmwareKind.Bios : FirmwareKind.None,
                    "bios" => FirmwareKind.Bios,
                    "none" => FirmwareKind.None,
                    var f => throw new FormatException($"--firmware must be bios or none, got '{f}'"),
                };
                if (cfg.Firmware == FirmwareKind.Bios && cfg.Kernel != null)
                    throw new FormatException("--kernel boots the kernel directly: it cannot be combined with --firmware bios");
                if (r.GetValue(bootOrder) is { } order)
                {
                    if (cfg.Firmware != FirmwareKind.Bios) throw new FormatException("--boot-order is for firmware boot (--firmware bios, or --disk without --kernel)");
                    cfg.BootOrder = VmSpec.ParseBootOrder(order, cfg.Disks.Count);
                }
                // Vm.Create refuses them without firmware boot, and a name given twice (one place for both checks).
                foreach (string f in r.GetValue(fwCfg) ?? []) cfg.FwCfgFiles.Add(FwCfgFileConfig.Parse(f));
                if (jailed)
                {
                    if (cfg.Nics.Any(n => n.Netns != null))
                        throw new FormatException("--jail cannot attach a TAP in another network namespace (netns=): the jailed VMM may not enter namespaces");
                    var (uid, gid) = Jail.JailConfig.ParseUser(r.GetValue(jailUser)!);
                    jailConfig = new Jail.JailConfig(r.GetValue(jail), uid, gid) { ExtraBinds = r.GetValue(jailBind) ?? [], KeepHostNetwork = r.GetValue(jailHostNet) };
                }
                else if (r.GetResult(jailUser) is { Implicit: false }) throw new FormatException("--jail-user is for --jail");
                else if (r.GetResult(jailBind) is { Implicit: false }) throw new FormatException("--jail-bind is for --jail");
                else if (r.GetValue(jailHostNet)) throw new FormatException("--jail-host-net is for --jail");
            }
            catch (FormatException e)
            {
                Console.Error.WriteLine($"dirigent run: {e.Message}");
                return ExitCodes.BadInput;
            }
            if (jailConfig != null)
                return Jail.JailLauncher.Run(jailConfig, cfg, opts, InnerOptions(r, passedIn), r.GetValue(fwCfg) ?? [], Console.Error);
            return RunWithSignals(cfg, opts);
        });
        return cmd;
    }

    /// <summary>The options given on this command line among <paramref name="options"/>, as tokens again.</summary>
    private static List<string> InnerOptions(ParseResult r, Option[] options)
    {
        var a = new List<string>();
        foreach (var o in options)
        {
            if (r.GetResult(o) is not { Implicit: false } res) continue;
            if (o is Option<bool>) { if (r.GetValue((Option<bool>)o)) a.Add(o.Name); continue; }
            foreach (var t in res.Tokens) { a.Add(o.Name); a.Add(t.Value); }
        }
        return a;
    }

    private static AccelKind ParseAccel(string a) => a switch
    {
        "auto" => AccelKind.Auto,
        "emu" => AccelKind.Emu,
        "kvm" => AccelKind.Kvm,
        _ => throw new FormatException($"--accel must be emu, kvm or auto, got '{a}'"),
    };

    /// <summary>
    /// SIGTERM, SIGINT and SIGHUP stop the VM in order (vCPUs, then devices, disks flushed and closed, TAPs closed,
    /// terminal restored), then one line and status 128+signal (the exit file says kind "signal"). A second signal
    /// meanwhile exits at once (after writing the exit file).
    /// </summary>
    private static int RunWithSignals(VmSpec cfg, RunOptions opts)
    {
        using var cts = new CancellationTokenSource();
        int signal = 0;
        void OnSignal(System.Runtime.InteropServices.PosixSignalContext ctx, int number, string name)
        {
            ctx.Cancel = true;
            if (Interlocked.CompareExchange(ref signal, number, 0) != 0)
            {
                Console.Error.WriteLine($"dirigent: {name} again: exiting at once");
                if (opts.ExitFile != null)
                    Worker.ExitFile.Write(opts.ExitFile, new Worker.ExitFile.Record("stopped", "signal",
                        $"{name} while stopping: exited at once", 128 + number), Console.Error);
                Environment.Exit(128 + number);
            }
            opts.Signal = new StopSignal(name, number);
            cts.Cancel();
        }
        using var term = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGTERM, c => OnSignal(c, 15, "SIGTERM"));
        using var intr = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGINT, c => OnSignal(c, 2, "SIGINT"));
        using var hup = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGHUP, c => OnSignal(c, 1, "SIGHUP"));
        int rc = VmLauncher.Run(cfg, Console.Error, cancel: cts.Token, opts: opts);
        // Run returned 128+signal (and wrote the exit file) if a signal stopped the VM.
        if (opts.Signal is { } sig) Console.Error.WriteLine($"dirigent: stopped by {sig.Name}");
        return rc;
    }
}
