using System.CommandLine;
using Dirigent.Images;
using Dirigent.Images.Debian;
using Dirigent.Vmm;

namespace Dirigent.Cli;

/// <summary>
/// `dirigent image build`: the default guest (kernel + initramfs, into the cache), and `image build debian`: a
/// bootable Debian system disk (<see cref="DebianImageBuilder"/>).
/// </summary>
internal static class ImageCommand
{
    public static Command Create()
    {
        var image = new Command("image", "Guest images: the default guest (Debian cloud kernel + busybox initramfs) and Debian system disks");
        var build = new Command("build", "Build the default guest image into the cache (needs apt-get and network); `build debian` builds a system disk");
        build.SetAction(_ =>
        {
            try
            {
                var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
                Console.WriteLine($"kernel    {img.Kernel} ({img.KernelVersion})");
                Console.WriteLine($"initramfs {img.Initramfs}");
                return ExitCodes.Ok;
            }
            catch (ImageBuildException e)
            {
                Console.Error.WriteLine($"dirigent image build: {e.Message}");
                return ExitCodes.BadInput;
            }
        });
        build.Subcommands.Add(CreateDebian());
        image.Subcommands.Add(build);
        return image;
    }

    private static Command CreateDebian()
    {
        var release = new Option<string?>("--release") { Description = $"Debian release: {string.Join(", ", DebianImageOptions.KnownReleases)} (default {DebianImageOptions.DefaultRelease})" };
        var size = new Option<string?>("--size", "-s") { Description = "Virtual disk size: 4G (default), 8G, 3072M... at least 2G" };
        var format = new Option<string?>("--format", "-f") { Description = "qcow2 (default) or raw" };
        var sshKey = new Option<string?>("--ssh-key") { Description = "OpenSSH public key file for root; without it a random root password is printed once" };
        var hostname = new Option<string?>("--hostname") { Description = "The guest's hostname (default: the output file's name without extension)" };
        var output = new Option<string>("--out", "-o") { Description = "The image file to write (must not exist)", Required = true };
        var cmd = new Command("debian", "Build a bootable Debian disk (systemd, SSH, DHCP, serial console, GRUB for BIOS) with mmdebstrap; needs root and a Debian mirror")
        {
            release, size, format, sshKey, hostname, output,
        };
        cmd.SetAction(r =>
        {
            DebianImageOptions o;
            try
            {
                o = DebianImageOptions.Parse(r.GetValue(output)!, r.GetValue(release), r.GetValue(size), r.GetValue(format),
                    r.GetValue(sshKey), r.GetValue(hostname), VmLauncher.CacheDir);
            }
            catch (ImageBuildException e)
            {
                Console.Error.WriteLine($"dirigent image build debian: {e.Message}");
                return ExitCodes.BadInput;
            }
            if (!OperatingSystem.IsLinux())
            {
                Console.Error.WriteLine("dirigent image build debian: building a Debian image needs a Linux host");
                return ExitCodes.VmmFailure;
            }
            try
            {
                var result = DebianImageBuilder.Build(o, m => Console.Error.WriteLine($"dirigent: {m}"));
                Console.WriteLine($"image    {result.Path}");
                Console.WriteLine($"kernel   {result.KernelVersion}");
                Console.WriteLine($"root fs  UUID={result.RootUuid}");
                Console.WriteLine(result.RootPassword != null
                    ? $"login    root / {result.RootPassword}   (shown only now: write it down)"
                    : "login    root with your SSH key");
                return ExitCodes.Ok;
            }
            catch (Exception e) when (e is ImageBuildException or IOException or UnauthorizedAccessException or Dirigent.Storage.BlockDeviceException)
            {
                Console.Error.WriteLine($"dirigent image build debian: {e.Message}");
                return e is ImageBuildException { BadInput: true } ? ExitCodes.BadInput : ExitCodes.VmmFailure;
            }
        });
        return cmd;
    }
}
