using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Dirigent.Vmm;

namespace Dirigent.Cli.Jail;

/// <summary>`--jail[=DIR]` and `--jail-user UID:GID` as given.</summary>
internal sealed record JailConfig(string? Dir, int Uid, int Gid)
{
    /// <summary>--jail-bind values: PATH or PATH,ro.</summary>
    public IReadOnlyList<string> ExtraBinds { get; init; } = [];
    /// <summary>--jail-host-net: keep the host's network namespace even without NICs (a VM that may migrate out over TCP).</summary>
    public bool KeepHostNetwork { get; init; }

    /// <summary>nobody:nogroup on Debian: owns nothing, so a jailed VMM can write only what it is given.</summary>
    public const int DefaultId = 65534;

    public static (int Uid, int Gid) ParseUser(string value)
    {
        var parts = value.Split(':');
        if (parts.Length is 1 or 2 && int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int uid) && uid > 0)
        {
            int gid = uid;
            if (parts.Length == 1 || (int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out gid) && gid > 0))
                return (uid, gid);
        }
        throw new FormatException($"--jail-user must be UID[:GID], numeric and not 0 (root), got '{value}'");
    }
}

/// <summary>One host path the jail shows at the same path inside, read-only or writable.</summary>
internal sealed record JailBind(string Path, bool Writable);

/// <summary>
/// What goes into one VM's jail and the launcher script that builds it. The jail's root is a fresh tmpfs (only in
/// the VMM's mount namespace, so the host never sees it filled) with bind mounts of exactly: the .NET runtime and
/// Dirigent's own build output (read-only), the host's shared libraries (read-only: the runtime, libseccomp and
/// libslirp are dynamically linked), the VM's kernel/initrd/firmware/fw_cfg files (read-only), its disks, its console
/// log and serial file, the device nodes it uses, a private /proc of its PID namespace, a private /tmp, and DIR/run
/// (at /dirigent: the one host directory it may create files in, for its API socket and exit record). Every path keeps its host name.
/// </summary>
internal sealed class JailPlan
{
    public required JailConfig Config { get; init; }
    /// <summary>The jail's host directory: root/ (the mount point of the jail's root) and run/.</summary>
    public required string Dir { get; init; }
    public bool DirCreated { get; init; }
    public List<JailBind> Binds { get; } = [];
    /// <summary>Supplementary groups for the jail user: the groups of device nodes it must open (kvm).</summary>
    public List<int> ExtraGroups { get; } = [];
    /// <summary>A network namespace of its own: only when no NIC needs the host's (TAP or user networking).</summary>
    public bool NewNetNamespace { get; init; }

    public string RootDir => Path.Combine(Dir, "root");
    public string RunDir => Path.Combine(Dir, "run");
    public string ScriptPath => Path.Combine(Dir, "launch.sh");
    /// <summary>Inside the jail: the API socket and the exit record live in /dirigent (the host's DIR/run).</summary>
    public const string InnerApiSocket = "/dirigent/api.sock", InnerExitFile = "/dirigent/exit.json";
    /// <summary>An --incoming unix:PATH listens here inside; the host's PATH becomes a link to it, as the API socket.</summary>
    public const string InnerIncomingSocket = "/dirigent/incoming.sock";
    public string HostIncomingSocket => Path.Combine(RunDir, "incoming.sock");
    public string HostApiSocket => Path.Combine(RunDir, "api.sock");
    public string HostExitFile => Path.Combine(RunDir, "exit.json");

    /// <summary>The tools the launcher runs (util-linux and coreutils); null entries are missing.</summary>
    public static readonly string[] Tools = ["unshare", "setpriv", "mount", "chroot"];

    public static string? FindTool(string name) =>
        new[] { "/usr/bin", "/usr/sbin", "/bin", "/sbin" }.Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    /// <summary>
    /// What the VM needs inside (checked for the jail user's access first). Throws FormatException (status 2) for a
    /// file the jail user may not read or write, or an option the jail cannot carry yet.
    /// </summary>
    public void AddVmFiles(VmSpec cfg, IEnumerable<string> fwCfgOptions)
    {
        // The runtime and our own assemblies: the dotnet root (shared/Microsoft.NETCore.App/VERSION is 3 levels below it).
        string runtimeDir = RuntimeEnvironment.GetRuntimeDirectory().TrimEnd('/');
        string dotnetRoot = Path.GetFullPath(Path.Combine(runtimeDir, "..", "..", ".."));
        Binds.Add(new JailBind(dotnetRoot, false));
        Binds.Add(new JailBind(AppContext.BaseDirectory.TrimEnd('/'), false));
        Binds.Add(new JailBind(LibDir, false));
        if (Directory.Exists("/usr/lib64")) Binds.Add(new JailBind("/usr/lib64", false));
        foreach (string dev in (string[])["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"])
            Binds.Add(new JailBind(dev, true));
        if (cfg.Accel != AccelKind.Emu && File.Exists("/dev/kvm"))
        {
            Binds.Add(new JailBind("/dev/kvm", true));
            // /dev/kvm is root:kvm 0660: the jail user gets the kvm group, and no other.
            if (JailNative.Owner("/dev/kvm") is { } kvm && !JailNative.MayAccess("/dev/kvm", Config.Uid, Config.Gid, true)) ExtraGroups.Add(kvm.Gid);
        }
        if (cfg.Nics.Any(n => n.Tap != null)) Binds.Add(new JailBind("/dev/net/tun", true));

        if (cfg.Kernel != null)
        {
            AddFile(cfg.Kernel, false, "--kernel");
            // A System.map kept beside the kernel (the default guest's cache) comes along when the jail user can read
            // it: the per-VM API's process list and trace name processes with it. Optional, so never an error.
            if (Dirigent.Images.DefaultImage.CachedSystemMap(cfg.Kernel) is { } map
                && JailNative.MayAccess(map, Config.Uid, Config.Gid, false))
                AddBind(map, false);
        }
        foreach (string i in cfg.Initrds) AddFile(i, false, "--initrd");
        if (cfg.Firmware == FirmwareKind.Bios)
        {
            string bios = cfg.FirmwarePath ?? Dirigent.Devices.Firmware.BiosConfig.DefaultBiosPath;
            if (Directory.Exists(Path.GetDirectoryName(bios))) Binds.Add(new JailBind(Path.GetDirectoryName(bios)!, false));
        }
        foreach (string f in fwCfgOptions)
            foreach (string part in f.Split(','))
                if (part.StartsWith("file=", StringComparison.Ordinal)) AddFile(part[5..], false, "--fw-cfg");
        foreach (var d in cfg.Disks)
        {
            AddFile(d.Path, !d.ReadOnly, "--disk");
            AddBackingChain(d.Path, d.Format);
        }
    }

    /// <summary>
    /// `--restore DIR`: the snapshot directory (read-only: its memory file is mapped copy-on-write) and what its saved
    /// spec names: disks (with their backing chains), and kernel/initrd/firmware/fw_cfg files that still exist (a
    /// restored VM does not load them again, but the board is built from the same spec; fw_cfg contents are in the spec).
    /// </summary>
    public VmSpec AddSnapshot(string dir)
    {
        dir = Path.GetFullPath(dir);
        VmSpec spec;
        try { spec = Vm.ReadSnapshotSpec(dir); }
        catch (VmException e) { throw new FormatException(e.Message); }
        if (!JailNative.MayAccess(dir, Config.Uid, Config.Gid, false))
            throw new FormatException($"--jail: the snapshot {dir} is not readable by the jail user {Config.Uid}:{Config.Gid}");
        AddBind(dir, false);
        var copy = new VmSpec
        {
            Accel = spec.Accel, Firmware = spec.Firmware, FirmwarePath = spec.FirmwarePath, Nics = spec.Nics,
            Kernel = spec.Kernel is { } k && File.Exists(k) ? k : null,
        };
        copy.Initrds.AddRange(spec.Initrds.Where(File.Exists));
        copy.Disks.AddRange(spec.Disks);
        AddVmFiles(copy, []); // fw_cfg files travel in the spec itself
        return spec;
    }

    /// <summary>`--jail-bind PATH[,ro]`: a host file or directory shown at its own path (incoming disks, a snapshot
    /// target directory). Writable unless ro; the jail user must already have the access asked for.</summary>
    public void AddExtra(string spec)
    {
        var parts = spec.Split(',');
        bool ro = parts.Length == 2 && parts[1] == "ro";
        if (parts.Length > 2 || (parts.Length == 2 && !ro) || parts[0].Length == 0)
            throw new FormatException($"--jail-bind must be PATH or PATH,ro, got '{spec}'");
        string path = Path.GetFullPath(parts[0]);
        if (!File.Exists(path) && !Directory.Exists(path)) throw new FormatException($"--jail-bind {path}: no such file or directory");
        if (!JailNative.MayAccess(path, Config.Uid, Config.Gid, !ro))
            throw new FormatException($"--jail-bind: {path} is not {(ro ? "readable" : "writable")} by the jail user {Config.Uid}:{Config.Gid}");
        AddBind(path, !ro);
    }

    /// <summary>A qcow2 disk's backing files, read-only (the VMM opens them by the names in the images).</summary>
    private void AddBackingChain(string path, DiskFormat format)
    {
        if (format == DiskFormat.Raw) return;
        try
        {
            using var disk = Dirigent.Storage.DiskImage.Open(path, format == DiskFormat.Qcow2 ? "qcow2" : null, readOnly: true);
            for (var b = (disk as Dirigent.Storage.Qcow2Disk)?.Backing; b != null; b = (b as Dirigent.Storage.Qcow2Disk)?.Backing)
            {
                string bp = b switch { Dirigent.Storage.Qcow2Disk q => q.Path, Dirigent.Storage.RawDisk r => r.Path, _ => "" };
                if (bp.Length > 0) AddFile(bp, false, "--disk backing file");
            }
        }
        catch (Dirigent.Storage.BlockDeviceException) { } // the VMM reports a broken image itself, with its own words
        catch (IOException) { }
    }

    /// <summary>An output file the VMM appends to (--console-log, --serial file:): made if absent and given to the jail user.</summary>
    public void AddOutputFile(string path)
    {
        path = Path.GetFullPath(path);
        if (!File.Exists(path))
        {
            using (File.Open(path, FileMode.Append, FileAccess.Write)) { }
            JailNative.Chown(path, Config.Uid, Config.Gid);
        }
        AddFile(path, true, path);
    }

    /// <summary>A file the VMM reads at start that the spec does not name (--system-map), read-only.</summary>
    public void AddInputFile(string path, string what) => AddFile(path, false, what);

    private void AddFile(string path, bool writable, string what)
    {
        path = Path.GetFullPath(path);
        if (!File.Exists(path)) throw new FormatException($"{what} {path}: no such file");
        if (!JailNative.MayAccess(path, Config.Uid, Config.Gid, writable))
            throw new FormatException($"--jail: {path} is not {(writable ? "writable" : "readable")} by the jail user " +
                $"{Config.Uid}:{Config.Gid} (chown or chmod it, or choose --jail-user)");
        AddBind(path, writable);
    }

    /// <summary>
    /// Adds a bind unless a directory already bound covers it with at least this access (a read-only path inside a
    /// writable one), and drops binds the new directory covers the same way: no path is bound twice.
    /// </summary>
    private void AddBind(string path, bool writable)
    {
        static bool Under(string p, string dir) => p == dir || p.StartsWith(dir + "/", StringComparison.Ordinal);
        if (Binds.Any(b => Under(path, b.Path) && (b.Writable || !writable) && (b.Path == path || Directory.Exists(b.Path)))) return;
        if (Directory.Exists(path)) Binds.RemoveAll(b => Under(b.Path, path) && (writable || !b.Writable));
        Binds.Add(new JailBind(path, writable));
    }

    /// <summary>The host's multiarch library directory (glibc, ICU, libseccomp, libslirp).</summary>
    private static string LibDir => RuntimeInformation.ProcessArchitecture == Architecture.Arm64
        ? "/usr/lib/aarch64-linux-gnu" : "/usr/lib/x86_64-linux-gnu";

    private static string Q(string s) => "'" + s.Replace("'", "'\"'\"'") + "'";

    /// <summary>
    /// The launcher script, run by `unshare` as PID 1 of the new namespaces and still root: builds the jail root,
    /// then `setpriv --no-new-privs` and `chroot --userspec` exec the VMM ("$@") as the jail user, without
    /// capabilities (a uid change from root clears them) and unable to gain any (no_new_privs).
    /// </summary>
    public string Script()
    {
        var s = new StringBuilder();
        s.Append($$"""
            #!/bin/sh
            # Generated by `dirigent run --jail`: builds this VM's jail and runs the VMM in it. Runs as PID 1 of fresh
            # mount, PID, IPC and UTS{{(NewNetNamespace ? " and network" : "")}} namespaces; nothing here is visible to the host.
            set -eu
            R={{Q(RootDir)}}
            # The jail's root: a private tmpfs; the mounts below are the only host files it shows.
            mount -t tmpfs -o mode=0755,size=16m dirigent-jail "$R"
            mkdir -p "$R/proc" "$R/dirigent" "$R/tmp"
            # /proc of the new PID namespace: the VMM sees itself (as PID 1) and nothing of the host's processes.
            mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
            # The one host directory the VMM may create files in (API socket, exit record).
            mount --bind {{Q(RunDir)}} "$R/dirigent"
            # A private /tmp (before the binds: files under the host's /tmp are bound into it).
            mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev,noexec dirigent-tmp "$R/tmp"
            # b PATH rw|ro: bind the host's PATH at the same path inside the jail.
            b() {
              if [ -d "$1" ]; then mkdir -p "$R$1"; else mkdir -p "$R$(dirname "$1")"; [ -e "$R$1" ] || : >"$R$1"; fi
              mount --bind "$1" "$R$1"
              if [ "$2" = ro ]; then mount -o remount,bind,ro,nosuid,nodev "$R$1"; else mount -o remount,bind,nosuid "$R$1"; fi
            }

            """);
        foreach (var b in Binds) s.Append($"b {Q(b.Path)} {(b.Writable ? "rw" : "ro")}\n");
        s.Append($$"""
            # The dynamic loader is found as /lib64/ld-linux-*.so.2 and libraries under /lib: merged-/usr links.
            [ -e "$R/lib" ] || ln -s usr/lib "$R/lib"
            [ -e "$R/lib64" ] || ln -s usr/lib64 "$R/lib64"

            # Nothing else may change in the jail's root.
            mount -o remount,ro "$R"
            hostname dirigent-jail 2>/dev/null || true
            exec setpriv --no-new-privs -- chroot --userspec={{Config.Uid}}:{{Config.Gid}} --groups={{string.Join(',', [Config.Gid, .. ExtraGroups])}} "$R" "$@"

            """);
        return s.ToString();
    }

    /// <summary>The unshare flags: always mount, PID, IPC, UTS; the network namespace when no NIC needs the host's.</summary>
    public IEnumerable<string> UnshareFlags() =>
        ["--mount", "--pid", "--ipc", "--uts", .. NewNetNamespace ? ["--net"] : Array.Empty<string>(), "--fork", "--kill-child"];
}
