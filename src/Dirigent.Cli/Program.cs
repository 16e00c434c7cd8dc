using System.CommandLine;
using System.Reflection;

namespace Dirigent.Cli;

public static class Program
{
    /// <summary>Exit status when a command exists but its feature has not landed yet.</summary>
    public const int NotYetAvailable = 3;

    public static int Main(string[] args)
    {
        var root = new RootCommand("Dirigent: a hypervisor with a software x86-64 CPU and KVM");

        var run = new Command("run", "Boot a VM (the default guest: Debian's stock kernel with a busybox initramfs)");
        run.SetAction(_ =>
        {
            Console.Error.WriteLine("dirigent run: booting a guest arrives with the Linux-boot issue (#3); this build has the software CPU only.");
            Console.Error.WriteLine("Try the CPU benchmark meanwhile: dotnet run -c Release --project bench/Dirigent.Bench");
            return NotYetAvailable;
        });
        root.Subcommands.Add(run);

        var version = new Command("version", "Print the version");
        version.SetAction(_ =>
        {
            Console.WriteLine($"dirigent {Assembly.GetExecutingAssembly().GetName().Version}");
            return 0;
        });
        root.Subcommands.Add(version);

        return root.Parse(args).Invoke();
    }
}
