using System.Globalization;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;

namespace Dirigent.Bench;

/// <summary>What /proc says about a set of host processes: resident memory and CPU time, the daemon bench's figures.</summary>
internal static partial class HostProcesses
{
    private static readonly double TicksPerSecond = sysconf(2 /* _SC_CLK_TCK */);

    /// <summary>VmRSS of one process in bytes (0 once it is gone).</summary>
    public static long Rss(int pid)
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException)
        {
        }
        return 0;
    }

    /// <summary>User + system CPU time of all the process's threads, in seconds (0 once it is gone).</summary>
    public static double CpuSeconds(int pid)
    {
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (IOException)
        {
            return 0;
        }
        // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
        string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // f[0] is field 3 (state): utime and stime are fields 14 and 15.
        return (long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture)) / TicksPerSecond;
    }

    /// <summary>
    /// CPU used by <paramref name="pids"/> over a window of <paramref name="window"/>, as a percentage of one core:
    /// the CPU-time deltas from /proc over the window's own length measured with the monotonic clock.
    /// </summary>
    public static double CpuPercent(IReadOnlyCollection<int> pids, TimeSpan window)
    {
        double before = pids.Sum(CpuSeconds);
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        Thread.Sleep(window);
        double after = pids.Sum(CpuSeconds);
        return (after - before) / System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds * 100;
    }

    /// <summary>Processes whose command line mentions <paramref name="marker"/> (a unique temporary path of ours).</summary>
    public static List<int> WithArgument(string marker)
    {
        var pids = new List<int>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == Environment.ProcessId)
                continue;
            try
            {
                if (File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ').Contains(marker, StringComparison.Ordinal))
                    pids.Add(pid);
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
        return pids;
    }

    /// <summary>SIGKILL one process we started (directly or through the daemon); gone already is fine.</summary>
    public static void Kill(int pid) => kill(pid, 9);

    public static (double P50, double P99) Percentiles(List<double> values)
    {
        if (values.Count == 0)
            return (double.NaN, double.NaN);
        var sorted = values.Order().ToList();
        return (sorted[(int)(0.50 * (sorted.Count - 1))], sorted[(int)Math.Ceiling(0.99 * (sorted.Count - 1))]);
    }

    public static double Median(List<double> values) => Percentiles(values).P50;

    [LibraryImport("libc", EntryPoint = "sysconf")]
    private static partial long sysconf(int name);

    [LibraryImport("libc", EntryPoint = "kill")]
    private static partial int kill(int pid, int signal);
}

/// <summary>The daemon's REST API over its Unix socket (HTTP/1.1, one pooled connection per concurrent request).</summary>
internal sealed class DaemonClient : IDisposable
{
    private readonly HttpClient _http;

    public DaemonClient(string socketPath, int connections)
    {
        var handler = new SocketsHttpHandler
        {
            MaxConnectionsPerServer = connections,
            PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
            ConnectCallback = async (_, ct) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        _http = new HttpClient(handler) { BaseAddress = new Uri("http://dirigent/"), Timeout = TimeSpan.FromSeconds(120) };
    }

    public async Task<(int Status, JsonNode? Body)> SendAsync(HttpMethod method, string path, JsonNode? body = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body != null)
            request.Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        using HttpResponseMessage response = await _http.SendAsync(request);
        string text = await response.Content.ReadAsStringAsync();
        JsonNode? json = null;
        if (text.Length > 0 && (response.Content.Headers.ContentType?.MediaType?.Contains("json", StringComparison.Ordinal) ?? false))
            json = JsonNode.Parse(text);
        return ((int)response.StatusCode, json);
    }

    /// <summary>Sends and requires <paramref name="expected"/>, else throws with the problem detail.</summary>
    public async Task<JsonNode?> ExpectAsync(int expected, HttpMethod method, string path, JsonNode? body = null)
    {
        var (status, json) = await SendAsync(method, path, body);
        return status == expected
            ? json
            : throw new InvalidOperationException($"{method} {path}: {status} {json?["detail"] ?? json?["title"] ?? json?.ToJsonString()}");
    }

    public async Task<byte[]> GetBytesAsync(string path)
    {
        using HttpResponseMessage response = await _http.GetAsync(path);
        return response.IsSuccessStatusCode ? await response.Content.ReadAsByteArrayAsync() : [];
    }

    public void Dispose() => _http.Dispose();
}
