using System.Globalization;
using Dirigent.Daemon.Disks;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// A VM's spec as `dirigent run` options (the worker's command line). The supervisor adds the daemon-side options
/// (--api-socket, --console-log, --exit-file, --serial none, --detach).
/// </summary>
internal static class WorkerArgs
{
    /// <param name="vmName">Under firmware boot, handed to the guest as its hostname (fw_cfg
    /// <see cref="Dirigent.Vmm.FwCfgFileConfig.GuestHostnameFile"/>), so clones of one image differ.</param>
    public static async Task<List<string>> BuildAsync(VmSpecModel spec, string vmName, DiskManager disks, CancellationToken ct)
    {
        var a = new List<string>
        {
            "--memory", spec.MemoryMib.ToString(CultureInfo.InvariantCulture) + "M",
            "--cpus", spec.Vcpus.ToString(CultureInfo.InvariantCulture),
            "--accel", spec.Accel,
        };
        if (spec.Kernel != null) { a.Add("--kernel"); a.Add(spec.Kernel); }
        else if (spec.Firmware == "bios")
        {
            a.Add("--firmware"); a.Add("bios");
            a.Add("--fw-cfg"); a.Add($"name={Dirigent.Vmm.FwCfgFileConfig.GuestHostnameFile},string={vmName}");
        }
        // `dirigent run --disk X` without --kernel boots the disk through SeaBIOS; the daemon's VMs without a kernel
        // and without "firmware": "bios" keep booting the default guest with their disks attached.
        else { a.Add("--firmware"); a.Add("none"); }
        if (spec.Initrd.Count > 0) { a.Add("--initrd"); a.Add(string.Join(',', spec.Initrd)); }
        if (spec.Cmdline != null) { a.Add("--append"); a.Add(spec.Cmdline); }
        foreach (var d in spec.Disks)
        {
            string path, format = d.Format;
            if (d.Disk != null)
            {
                // Resolved at each start: the disk's record says where its file is and what format it has.
                var rec = await disks.GetAsync(d.Disk, ct) ?? throw new InvalidOperationException($"disk '{d.Disk}' does not exist (any more)");
                path = rec.Path;
                format = rec.Format;
            }
            else path = d.Path!;
            var opt = path;
            if (format != "auto") opt += ",format=" + format;
            if (d.Readonly) opt += ",readonly";
            if (d.Bps > 0) opt += ",bps=" + d.Bps.ToString(CultureInfo.InvariantCulture);
            if (d.Iops > 0) opt += ",iops=" + d.Iops.ToString(CultureInfo.InvariantCulture);
            a.Add("--disk");
            a.Add(opt);
        }
        foreach (var n in spec.Nics)
        {
            var opt = n.User ? "user" + string.Concat((n.Hostfwd ?? []).Select(h => ",hostfwd=" + h)) : "tap=" + n.Tap;
            if (n.Mac != null) opt += ",mac=" + n.Mac;
            if (n.Netns != null) opt += ",netns=" + n.Netns;
            if (n.Bps > 0) opt += ",bps=" + n.Bps.ToString(CultureInfo.InvariantCulture);
            if (n.Pps > 0) opt += ",pps=" + n.Pps.ToString(CultureInfo.InvariantCulture);
            a.Add("--net");
            a.Add(opt);
        }
        if (spec.Rng) a.Add("--rng");
        return a;
    }
}
