using System.Runtime.InteropServices;

namespace Dirigent.Daemon.Workers;

/// <summary>
/// With jailed workers (the default as root), the files a worker writes must be the jail user's: `dirigent run --jail` refuses a writable
/// disk or a console log the jail user cannot write (it never changes ownership of what it is given). The daemon owns
/// these files (its disks and its VM directory), so it hands them over before each start.
/// </summary>
internal static partial class JailFiles
{
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int chown(string path, int uid, int gid);

    public static void GiveToJailUser(WorkerLaunch launch, string consoleLog, string snapshotsDir, int uid, int gid)
    {
        if (!File.Exists(consoleLog)) using (File.Open(consoleLog, FileMode.Append, FileAccess.Write)) { }
        Chown(consoleLog, uid, gid);
        // The worker saves snapshots into this directory (bound into its jail writable); earlier snapshots in it stay
        // the daemon's, readable by the jail user for a restore.
        Directory.CreateDirectory(snapshotsDir);
        Chown(snapshotsDir, uid, gid);
        var args = launch.RunArgs;
        for (int i = 0; i + 1 < args.Count; i++)
        {
            if (args[i] == "--restore")
            {
                // A restored VM writes the disks its snapshot names.
                Dirigent.Vmm.VmSpec spec;
                try { spec = Dirigent.Vmm.Vm.ReadSnapshotSpec(args[i + 1]); }
                catch (Dirigent.Vmm.VmException) { continue; } // the worker reports a bad snapshot itself
                foreach (var d in spec.Disks.Where(d => !d.ReadOnly)) Chown(d.Path, uid, gid);
                continue;
            }
            if (args[i] != "--disk") continue;
            var parts = args[i + 1].Split(',');
            if (parts.Skip(1).Contains("readonly")) continue;
            Chown(parts[0], uid, gid);
        }
    }

    private static void Chown(string path, int uid, int gid)
    {
        if (chown(path, uid, gid) != 0)
            throw new IOException($"cannot give {path} to {uid}:{gid} (errno {Marshal.GetLastPInvokeError()})");
    }
}
