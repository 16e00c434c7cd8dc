using System.Diagnostics;

namespace Dirigent.Tests.Cli;

/// <summary>One finished run of the real CLI: its status and everything it printed.</summary>
public sealed record CliResult(int Exit, string Out, string Err)
{
    public override string ToString() => $"exit {Exit}\nstdout:\n{Out}\nstderr:\n{Err}";
}

/// <summary>
/// Runs `dotnet dirigent.dll ARGS` (the CLI built beside the tests) as a child process, with DIRIGENT_HOME and
/// DIRIGENT_TOKEN under the test's control (never the developer's own), stdin empty, and a hang guard.
/// </summary>
public static class Cli
{
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(120);

    public static CliResult Run(string home, params string[] args) => RunWithToken(home, null, args);

    public static CliResult RunWithToken(string home, string? token, params string[] args) => RunCore(home, token, null, args);

    /// <summary>A run with extra environment variables.</summary>
    public static CliResult RunWithEnvironment(string home, Dictionary<string, string> env, params string[] args) => RunCore(home, null, env, args);

    private static CliResult RunCore(string home, string? token, Dictionary<string, string>? env, string[] args)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dirigent.dll"));
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["DIRIGENT_HOME"] = home;
        if (token != null) psi.Environment["DIRIGENT_TOKEN"] = token;
        else psi.Environment.Remove("DIRIGENT_TOKEN");
        foreach (var (k, v) in env ?? []) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(HangGuard))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"dirigent {string.Join(' ', args)} did not finish in {HangGuard.TotalSeconds} s");
        }
        p.WaitForExit(); // drains the redirected streams
        return new CliResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>A fresh temporary directory; deleted by the caller.</summary>
    public static string TempDir(string prefix)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)]);
        Directory.CreateDirectory(dir);
        return dir;
    }
}

/// <summary>A long-running CLI process (events, console): its output lines as they come, waited on without polling.</summary>
public sealed class CliChild : IDisposable
{
    private readonly System.Diagnostics.Process _p;
    private readonly List<string> _out = [], _err = [];
    private readonly Lock _lock = new();
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public CliChild(string home, params string[] args) : this(home, false, args) { }

    /// <summary>
    /// With <paramref name="pty"/>: inside util-linux `script`, so the CLI's stdin and stdout are a pseudo-terminal
    /// (what a person at a terminal has) while the test writes keystrokes into script's stdin.
    /// </summary>
    public CliChild(string home, bool pty, params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "dirigent.dll");
        var psi = new ProcessStartInfo(pty ? "script" : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        if (pty)
        {
            static string Quote(string a) => "'" + a.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
            foreach (string a in new[] { "-q", "-f", "-e", "-c", string.Join(' ', new[] { "dotnet", dll }.Concat(args).Select(Quote)), "/dev/null" })
                psi.ArgumentList.Add(a);
        }
        else
        {
            psi.ArgumentList.Add(dll);
            foreach (string a in args) psi.ArgumentList.Add(a);
        }
        psi.Environment["DIRIGENT_HOME"] = home;
        psi.Environment.Remove("DIRIGENT_TOKEN");
        _p = new System.Diagnostics.Process { StartInfo = psi, EnableRaisingEvents = true };
        _p.OutputDataReceived += (_, e) => Add(_out, e.Data);
        _p.ErrorDataReceived += (_, e) => Add(_err, e.Data);
        _p.Exited += (_, _) => Signal();
        _p.Start();
        _p.BeginOutputReadLine();
        _p.BeginErrorReadLine();
    }

    public System.Diagnostics.Process Process => _p;

    /// <summary>Whether util-linux `script` (for <see cref="CliChild(string, bool, string[])"/> with a pty) is installed.</summary>
    public static bool HasScript => new[] { "/usr/bin/script", "/bin/script" }.Any(File.Exists);

    public void Type(byte[] keys)
    {
        _p.StandardInput.BaseStream.Write(keys);
        _p.StandardInput.BaseStream.Flush();
    }

    public string Out { get { lock (_lock) return string.Join('\n', _out); } }
    public string Err { get { lock (_lock) return string.Join('\n', _err); } }

    private void Add(List<string> lines, string? line)
    {
        if (line == null) return;
        lock (_lock) lines.Add(line);
        Signal();
    }

    private void Signal()
    {
        TaskCompletionSource done;
        lock (_lock)
        {
            done = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        done.TrySetResult();
    }

    /// <summary>Waits until a stdout (or stderr) line matches; fails if the process exits first or the guard runs out.</summary>
    public async Task<string> WaitForLine(Func<string, bool> match, bool stderr = false, TimeSpan? timeout = null)
    {
        using var guard = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(240));
        while (true)
        {
            Task next;
            lock (_lock)
            {
                var hit = (stderr ? _err : _out).FirstOrDefault(match);
                if (hit != null) return hit;
                next = _changed.Task;
            }
            if (_p.HasExited) throw new InvalidOperationException($"exited ({_p.ExitCode}) first; stdout:\n{Out}\nstderr:\n{Err}");
            try { await next.WaitAsync(guard.Token); }
            catch (OperationCanceledException) { throw new TimeoutException($"no such line; stdout:\n{Out}\nstderr:\n{Err}"); }
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    /// <summary>SIGTERM, then the exit status.</summary>
    public async Task<int> TerminateAsync()
    {
        Assert.Equal(0, kill(_p.Id, 15));
        await _p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(240));
        return _p.ExitCode;
    }

    public void Dispose()
    {
        try { if (!_p.HasExited) _p.Kill(); }
        catch (InvalidOperationException) { }
        _p.Dispose();
    }
}
