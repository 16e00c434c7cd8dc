using System.Diagnostics;
using System.Text;
using Dirigent.Tests.Api;

namespace Dirigent.Tests.Cli;

/// <summary>
/// A real daemon (`dotnet dirigent.dll daemon --home TMP --listen 127.0.0.1:PORT`) for the CLI tests, with the tiny idle
/// guest written beside it. Dispose kills the daemon and the workers it started for this home (found by the home in
/// their command line), even when a test failed.
/// </summary>
public sealed class CliDaemon : IAsyncLifetime
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(240);
    private readonly StringBuilder _log = new();
    private Process? _daemon;

    /// <summary>Under /tmp with a short name: worker sockets (HOME/vms/NAME/worker.sock) must fit in 108 bytes.</summary>
    public string Home { get; } = Directory.CreateTempSubdirectory("dgc-").FullName;
    /// <summary>Prints <see cref="ApiTestVm.ReadyLine"/>, then halts with interrupts on: a VM that stays running.</summary>
    public string Kernel => Path.Combine(Home, "guest.bin");
    public string TcpBase { get; private set; } = "";
    public string Log { get { lock (_log) return _log.ToString(); } }

    public async Task InitializeAsync()
    {
        File.WriteAllBytes(Kernel, ApiTestVm.BuildGuest());
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, RedirectStandardInput = true };
        // The daemon's "serving" line names the endpoint as given, so the port is picked here (free a moment ago).
        var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        probe.Start();
        int port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "dirigent.dll"), "daemon", "--home", Home, "--listen", $"127.0.0.1:{port}" })
            psi.ArgumentList.Add(a);
        var ready = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var p = new Process { StartInfo = psi, EnableRaisingEvents = true };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data == null) return;
            lock (_log) _log.AppendLine(e.Data);
            if (e.Data.StartsWith("daemon: serving", StringComparison.Ordinal)) ready.TrySetResult(e.Data);
        };
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        p.Exited += (_, _) => ready.TrySetException(new InvalidOperationException($"the daemon exited before serving:\n{Log}"));
        p.Start();
        p.BeginErrorReadLine();
        p.BeginOutputReadLine();
        _daemon = p;
        // "daemon: serving SOCKET and http://127.0.0.1:PORT (state in ...)": the line comes once both listen.
        string line = await ready.Task.WaitAsync(Hang);
        int at = line.IndexOf(" and http://", StringComparison.Ordinal);
        Assert.True(at > 0, line);
        TcpBase = line[(at + 5)..].Split(' ')[0];
    }

    /// <summary>Runs the CLI against this daemon (its home in DIRIGENT_HOME).</summary>
    public CliResult Run(params string[] args) => Cli.Run(Home, args);

    /// <summary>Runs the CLI and expects status 0.</summary>
    public CliResult Ok(params string[] args)
    {
        var r = Cli.Run(Home, args);
        Assert.True(r.Exit == 0, $"dirigent {string.Join(' ', args)}: {r}\ndaemon:\n{Log}");
        return r;
    }

    public async Task DisposeAsync()
    {
        try { if (_daemon is { HasExited: false }) _daemon.Kill(); }
        catch (InvalidOperationException) { }
        foreach (int pid in ProcessesOfHome())
        {
            try
            {
                using var w = Process.GetProcessById(pid);
                w.Kill();
                await w.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or TimeoutException or System.ComponentModel.Win32Exception) { }
        }
        _daemon?.Dispose();
        try { Directory.Delete(Home, recursive: true); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    private List<int> ProcessesOfHome()
    {
        var pids = new List<int>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == Environment.ProcessId) continue;
            try
            {
                string cmd = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                if (cmd.Contains(Home + "/", StringComparison.Ordinal) || cmd.Contains(Home + " ", StringComparison.Ordinal)) pids.Add(pid);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        return pids;
    }
}
