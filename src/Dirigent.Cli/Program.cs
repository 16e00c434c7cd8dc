using System.CommandLine;
using System.Reflection;
using Dirigent.Vmm;

namespace Dirigent.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        // A VMM (`run`, also the daemon's workers) runs the software CPU's compiler: no W^X (RuntimeKnobs).
        if (args.Length > 0 && args[0] == "run") RuntimeKnobs.ExecWithVmmSettings();
        var root = new RootCommand("Dirigent: a hypervisor with a software x86-64 CPU (and KVM, later)");
        root.Subcommands.Add(RunCommand.Create());
        root.Subcommands.Add(DiskCommand.Create());
        root.Subcommands.Add(Client.VmCommands.Create());
        root.Subcommands.Add(Client.TokenCommands.Create());
        root.Subcommands.Add(Client.EventsCommand.Create());
        root.Subcommands.Add(Client.ClusterCommands.CreateCluster());
        root.Subcommands.Add(Client.ClusterCommands.CreateHost());
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
        // Last resort: an exception nothing else handled is a bug; the user gets one line and status 6, the details
        // go to a crash report (System.CommandLine's own handler would print a stack trace and return 1).
        AppDomain.CurrentDomain.UnhandledException += (_, e) => Environment.Exit(CrashReport.Write(e.ExceptionObject, args));
        try
        {
            // Fault injection for the tests of this path: an exception no code handles.
            if (Environment.GetEnvironmentVariable("DIRIGENT_TEST_CRASH") == "1")
                throw new InvalidOperationException("DIRIGENT_TEST_CRASH is set: a deliberate unhandled exception");
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e)
        {
            return CrashReport.Write(e, args);
        }
    }
}
