namespace Dirigent.Daemon.Host;

/// <summary>
/// The daemon's state directory layout (notes/daemon.md): inventory, API socket, one directory per VM (worker
/// socket, console log, exit file, snapshots) and the disks made through the API.
/// </summary>
public sealed class DaemonPaths
{
    public DaemonPaths(string home) => Home = Path.GetFullPath(home);

    public string Home { get; }
    public string InventoryDb => Path.Combine(Home, "inventory.db");
    public string Socket => Path.Combine(Home, "dirigent.sock");
    public string VmsDir => Path.Combine(Home, "vms");
    public string DisksDir => Path.Combine(Home, "disks");
    /// <summary>System images (`vm create --image NAME` clones HOME/images/NAME.qcow2 or .raw): built with
    /// `dirigent image build debian --out HOME/images/debian.qcow2`.</summary>
    public string ImagesDir => Path.Combine(Home, "images");
    public string VmDir(string vm) => Path.Combine(VmsDir, vm);
    public string ConsoleLog(string vm) => Path.Combine(VmDir(vm), "console.log");
    public string ExitFile(string vm) => Path.Combine(VmDir(vm), "exit.json");
    public string SnapshotsDir(string vm) => Path.Combine(VmDir(vm), Workers.WorkerSupervisor.SnapshotsDirName);
    public string SnapshotDir(string vm, string snap) => Path.Combine(SnapshotsDir(vm), snap);
    public string DiskFile(string disk, string format) => Path.Combine(DisksDir, $"{disk}.{format}");

    /// <summary>$DIRIGENT_HOME, else /var/lib/dirigent as root, else ~/.local/share/dirigent.</summary>
    public static string DefaultHome()
    {
        if (Environment.GetEnvironmentVariable("DIRIGENT_HOME") is { Length: > 0 } h) return h;
        if (Environment.UserName == "root" || geteuid() == 0) return "/var/lib/dirigent";
        return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share", "dirigent");
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern uint geteuid();

    /// <summary>Creates the directories (0750: VM consoles and disks are not for every local user).</summary>
    public void Create()
    {
        const UnixFileMode mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
                                  UnixFileMode.GroupRead | UnixFileMode.GroupExecute;
        foreach (var d in new[] { Home, VmsDir, DisksDir })
            if (!Directory.Exists(d))
            {
                if (OperatingSystem.IsLinux()) Directory.CreateDirectory(d, mode);
                else Directory.CreateDirectory(d);
            }
    }
}
