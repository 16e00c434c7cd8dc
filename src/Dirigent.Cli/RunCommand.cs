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
        var disk = new Option<string[]>("--disk") { Description = "virtio-blk disk: PATH[,format=raw|qcow2][,readonly] (repeatable)", AllowMultipleArgumentsPerToken = false };
        var rng = new Option<bool>("--rng") { Description = "Attach a virtio-rng device fed from the host's random source" };
        var net = new Option<string[]>("--net") { Description = "virtio-net card on a TAP interface: tap=NAME[,mac=MAC][,netns=NS] (repeatable)", AllowMultipleArgumentsPerToken = false };
        var cmd = new Command("run", "Boot a VM (default: Debian's stock cloud kernel with a busybox initramfs)")
        {
            kernel, initrd, append, memory, cpus, accel, serial, noReboot, disk, rng, net,
        };
        cmd.SetAction(r =>
        {
            var cfg = new VmSpec();
            try
            {
                cfg.Kernel = r.GetValue(kernel);
                string? ird = r.GetValue(initrd);
                if (!string.IsNullOrEmpty(ird)) cfg.Initrds.AddRange(ird.Split(',', StringSplitOptions.RemoveEmptyEntries));
                cfg.Append = r.GetValue(append) ?? "";
                cfg.MemoryBytes = VmSpec.ParseMemory(r.GetValue(memory)!);
                cfg.Cpus = r.GetValue(cpus);
                if (cfg.Cpus < 1 || cfg.Cpus > 64) throw new FormatException($"--cpus must be between 1 and 64, got {cfg.Cpus}");
                cfg.Accel = r.GetValue(accel) switch
                {
                    "auto" => AccelKind.Auto,
                    "emu" => AccelKind.Emu,
                    "kvm" => AccelKind.Kvm,
                    var a => throw new FormatException($"--accel must be emu, kvm or auto, got '{a}'"),
                };
                cfg.Serial = r.GetValue(serial)!;
                if (cfg.Serial is not ("stdio" or "none") && !cfg.Serial.StartsWith("file:", StringComparison.Ordinal))
                    throw new FormatException($"--serial must be stdio, file:PATH or none, got '{cfg.Serial}'");
                cfg.NoReboot = r.GetValue(noReboot);
                foreach (string spec in r.GetValue(net) ?? [])
                    cfg.Nics.Add(NicConfig.Parse(spec, cfg.Nics.Count));
                foreach (var d in r.GetValue(disk) ?? []) cfg.Disks.Add(VmSpec.ParseDisk(d));
                cfg.Rng = r.GetValue(rng);
            }
            catch (FormatException e)
            {
                Console.Error.WriteLine($"dirigent run: {e.Message}");
                return ExitCodes.BadInput;
            }
            return VmLauncher.Run(cfg, Console.Error);
        });
        return cmd;
    }
}
