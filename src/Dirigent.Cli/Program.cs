using System.CommandLine;
using System.Reflection;
using Dirigent.Vmm;

namespace Dirigent.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("Dirigent: a hypervisor with a software x86-64 CPU (and KVM, later)");
        root.Subcommands.Add(RunCommand.Create());
        root.Subcommands.Add(DiskCommand.Create());
        root.Subcommands.Add(Client.VmCommands.Create());
        root.Subcommands.Add(Client.TokenCommands.Create());
        root.Subcommands.Add(Client.EventsCommand.Create());
        root.Subcommands.Add(DaemonCommand.Create());

        root.Subcommands.Add(ImageCommand.Create());

        var version = new Command("version", "Print the version");
        version.SetAction(_ =>
        {
            Console.WriteLine($"dirigent {Assembly.GetExecutingAssembly().GetName().Version}");
            return 0;
        });
        root.Subcommands.Add(version);

        var parsed = root.Parse(args);
        // README: a bad command line is status 2 with one line, not System.CommandLine's 1 and a help page.
        if (parsed.Errors.Count > 0)
        {
            Console.Error.WriteLine($"dirigent: {parsed.Errors[0].Message}");
            return ExitCodes.BadInput;
        }
        return parsed.Invoke();
    }
}
