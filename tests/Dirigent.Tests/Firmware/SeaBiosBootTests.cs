using System.Diagnostics;
using Dirigent.Cli;
using Dirigent.Devices.Firmware;
using Dirigent.Images;
using Dirigent.Storage;
using Dirigent.Tests.Boot;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;
using Xunit.Abstractions;

namespace Dirigent.Tests.Firmware;

/// <summary>
/// Firmware boot end to end on the software CPU: Debian's SeaBIOS (package seabios) starts at the reset vector, finds
/// the virtio-blk disk made here (SYSLINUX's MBR, an active FAT16 partition with SYSLINUX, Debian's kernel and the
/// busybox initramfs), runs its MBR at 0x7C00, SYSLINUX loads the kernel, and the initramfs prints a marker and
/// powers off. The same disk as raw and as qcow2 (written through our qcow2 driver).
/// </summary>
[Trait("Category", "Boot")]
public class SeaBiosBootTests(ITestOutputHelper output)
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(4);
    public const string Marker = "dirigent-firmware-boot-marker";

    /// <summary>Skips (with what to install) where SeaBIOS or the disk tools are missing; .ci/run installs them.</summary>
    internal static void RequirePackages()
    {
        Skip.IfNot(File.Exists(BiosConfig.DefaultBiosPath), $"{BiosConfig.DefaultBiosPath} is missing: apt-get install seabios");
        Skip.If(BiosBootDisk.Missing() is not null, BiosBootDisk.Missing());
    }

    /// <summary>The boot disk in <paramref name="dir"/>, raw or converted to qcow2 by <see cref="DiskImage"/>.</summary>
    internal static string MakeDisk(TempDir dir, string format, string script, bool grub = false)
    {
        string raw = dir["boot.raw"];
        BiosBootDisk.Build(raw, s_image.Value.Kernel, s_image.Value.Initramfs,
            $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}", sizeMiB: 32, grub: grub);
        if (format == "raw") return raw;
        string q = dir["boot.qcow2"];
        long size = new FileInfo(raw).Length;
        DiskImage.Create(q, "qcow2", size);
        using (var src = DiskImage.Open(raw, "raw", readOnly: true))
        using (var dst = DiskImage.Open(q, "qcow2", readOnly: false))
        {
            var buf = new byte[1 << 16];
            for (long off = 0; off < size; off += buf.Length)
            {
                src.Read(off, buf);
                if (buf.AsSpan().IndexOfAnyExcept((byte)0) >= 0) dst.Write(off, buf);
            }
            dst.Flush();
        }
        return q;
    }

    /// <summary>SYSLINUX on raw and qcow2; GRUB (grub-pc-bin's boot.img and core.img, as grub-install embeds them) on raw.</summary>
    [SkippableTheory]
    [InlineData("raw", "syslinux")]
    [InlineData("qcow2", "syslinux")]
    [InlineData("raw", "grub")]
    public void SeaBiosBootsTheDiskThroughItsBootLoaderToTheKernelWhichPrintsTheMarkerAndPowersOff(string format, string loader)
    {
        RequirePackages();
        if (loader == "grub") Skip.If(BiosBootDisk.MissingGrub() is not null, BiosBootDisk.MissingGrub());
        using var dir = new TempDir();
        string disk = MakeDisk(dir, format, $"echo {Marker}", grub: loader == "grub");
        var cfg = new VmSpec
        {
            Firmware = FirmwareKind.Bios, MemoryBytes = 256UL << 20,
            Disks = [new DiskConfig(disk, DiskFormat.Auto, ReadOnly: false)],
        };
        var sw = Stopwatch.StartNew();
        var r = new GuestRunner();
        int rc = r.Run(cfg, BootTimeout);
        output.WriteLine($"{format}, {loader}: firmware to power-off in {sw.Elapsed.TotalSeconds:F1} s wall");
        string o = r.Output;
        Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}\n{GuestRunner.Tail(o)}");
        // SeaBIOS's banner and boot line reach COM1 through its serial console (fw_cfg NOGRAPHIC / etc/sercon-port).
        Assert.Contains("SeaBIOS (version", o);
        Assert.Contains("Booting from Hard Disk", o);
        Assert.Contains(loader == "grub" ? "GRUB loading" : "SYSLINUX", o);
        Assert.True(o.IndexOf("SeaBIOS (version", StringComparison.Ordinal) < o.IndexOf(Marker, StringComparison.Ordinal),
            $"the marker came before the BIOS banner:\n{GuestRunner.Tail(o)}");
        Assert.Contains($"{Marker}\r\n{InitScript.ExitStatusPrefix}0", o.Replace("\r\r\n", "\r\n"));
        foreach (var bad in new[] { "BUG:", "WARNING:", "Oops", "I/O error" })
            Assert.False(o.Contains(bad, StringComparison.Ordinal), $"console shows '{bad}':\n{GuestRunner.Tail(o)}");
    }

    [Fact]
    public void WithoutTheBiosImageTheRunFailsWithOneLineNamingThePackage()
    {
        using var dir = new TempDir();
        string disk = dir["empty.raw"];
        File.WriteAllBytes(disk, new byte[1 << 20]);
        var cfg = new VmSpec
        {
            Firmware = FirmwareKind.Bios, FirmwarePath = dir["no-such-bios.bin"],
            Disks = [new DiskConfig(disk, DiskFormat.Raw, ReadOnly: false)],
        };
        var err = new StringWriter();
        int rc = VmLauncher.Run(cfg, err, new MemoryStream(), Stream.Null, useTerminal: false);
        Assert.Equal(ExitCodes.BadInput, rc);
        string text = err.ToString().Trim();
        Assert.Single(text.Split('\n'));
        Assert.Contains("no-such-bios.bin", text);
    }
}

/// <summary>
/// SeaBIOS up to the MBR on each accelerator: a disk whose MBR writes 0x2A to the debug-exit port. The software CPU
/// always; KVM where it is usable (an emulating KVM such as PVM runs SeaBIOS too, slowly).
/// </summary>
[Trait("Category", "Boot")]
public class SeaBiosMbrTests(ITestOutputHelper output)
{
    [SkippableTheory]
    [InlineData(AccelKind.Emu)]
    [InlineData(AccelKind.Kvm)]
    public void SeaBiosRunsTheMbrAt7C00(AccelKind accel)
    {
        Skip.IfNot(File.Exists(BiosConfig.DefaultBiosPath), $"{BiosConfig.DefaultBiosPath} is missing: apt-get install seabios");
        if (accel == AccelKind.Kvm) Skip.IfNot(Dirigent.Accel.Kvm.KvmAccelerator.Probe(out var why), $"KVM is not usable here: {why}");
        using var dir = new TempDir();
        string disk = dir["mbr.raw"];
        BiosBootDisk.WriteDebugExitMbr(disk, 0x2A);
        var cfg = new VmSpec
        {
            Firmware = FirmwareKind.Bios, MemoryBytes = 128UL << 20, Accel = accel,
            Disks = [new DiskConfig(disk, DiskFormat.Raw, ReadOnly: false)],
        };
        var log = new StringWriter();
        using var vm = Vm.Create(cfg, log);
        var sw = Stopwatch.StartNew();
        vm.Start();
        Assert.True(vm.Completion.Wait(TimeSpan.FromMinutes(3)), $"the VM did not reach the MBR; console:\n{System.Text.Encoding.ASCII.GetString(vm.Console.Recent())}");
        var reason = vm.Completion.Result;
        output.WriteLine($"{vm.AccelName}: reached the MBR after {sw.Elapsed.TotalSeconds:F2} s wall, {vm.Uptime.TotalSeconds:F3} s VM time");
        Assert.True(reason.Kind == VmExitKind.DebugExit, $"ended as {reason}; console:\n{System.Text.Encoding.ASCII.GetString(vm.Console.Recent())}\n{log}");
        Assert.Equal(0x2A, reason.DebugExitValue);
    }
}
