using System.Collections.Concurrent;
using System.Globalization;
using System.Text;

namespace Dirigent.Daemon.Api;

/// <summary>The daemon's own request counts and latencies, rendered in Prometheus text format.</summary>
internal sealed class RequestMetrics
{
    private static readonly double[] Buckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

    private sealed class Histogram
    {
        public readonly long[] Counts = new long[Buckets.Length];
        public long Count;
        public double Sum;
    }

    private readonly ConcurrentDictionary<(string Method, string Route, int Status), long> _requests = new();
    private readonly ConcurrentDictionary<(string Method, string Route), Histogram> _latency = new();

    public void Record(string method, string route, int status, double seconds)
    {
        _requests.AddOrUpdate((method, route, status), 1, (_, n) => n + 1);
        var h = _latency.GetOrAdd((method, route), _ => new Histogram());
        lock (h)
        {
            for (int i = 0; i < Buckets.Length; i++) if (seconds <= Buckets[i]) h.Counts[i]++;
            h.Count++;
            h.Sum += seconds;
        }
    }

    public void Render(StringBuilder sb)
    {
        sb.Append("# HELP dirigent_http_requests_total API requests answered, by method, route and status.\n");
        sb.Append("# TYPE dirigent_http_requests_total counter\n");
        foreach (var ((m, r, s), n) in _requests.OrderBy(k => k.Key.Route, StringComparer.Ordinal).ThenBy(k => k.Key.Method).ThenBy(k => k.Key.Status))
            sb.Append(CultureInfo.InvariantCulture, $"dirigent_http_requests_total{{method=\"{m}\",route=\"{Prometheus.Escape(r)}\",status=\"{s}\"}} {n}\n");
        sb.Append("# HELP dirigent_http_request_duration_seconds API request latency.\n");
        sb.Append("# TYPE dirigent_http_request_duration_seconds histogram\n");
        foreach (var ((m, r), h) in _latency.OrderBy(k => k.Key.Route, StringComparer.Ordinal).ThenBy(k => k.Key.Method))
        {
            string labels = $"method=\"{m}\",route=\"{Prometheus.Escape(r)}\"";
            lock (h)
            {
                for (int i = 0; i < Buckets.Length; i++)
                    sb.Append(CultureInfo.InvariantCulture, $"dirigent_http_request_duration_seconds_bucket{{{labels},le=\"{Buckets[i]}\"}} {h.Counts[i]}\n");
                sb.Append(CultureInfo.InvariantCulture, $"dirigent_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {h.Count}\n");
                sb.Append(CultureInfo.InvariantCulture, $"dirigent_http_request_duration_seconds_sum{{{labels}}} {h.Sum}\n");
                sb.Append(CultureInfo.InvariantCulture, $"dirigent_http_request_duration_seconds_count{{{labels}}} {h.Count}\n");
            }
        }
    }
}

internal static class Prometheus
{
    /// <summary>Label values escape backslash, double quote and newline (exposition format).</summary>
    public static string Escape(string s) => s.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");
}
