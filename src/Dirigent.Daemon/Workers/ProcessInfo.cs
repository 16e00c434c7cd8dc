using System.Globalization;
using System.Runtime.InteropServices;

namespace Dirigent.Daemon.Workers;

/// <summary>
/// What /proc says about a process: whether it is alive and when it started. A PID alone does not name a process
/// across a daemon restart (PIDs are reused), PID + start time does.
/// </summary>
public static partial class ProcessInfo
{
    /// <summary>
    /// /proc/PID/stat field 22, starttime: clock ticks after boot when the process started; null when there is no such
    /// process, or it is a zombie (dead, only waiting to be reaped: no longer a worker).
    /// </summary>
    public static long? StartTime(int pid)
    {
        if (pid <= 0) return null;
        string stat;
        try { stat = File.ReadAllText($"/proc/{pid}/stat"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        return ParseStartTime(stat);
    }

    /// <summary>Parses a /proc/PID/stat line: null for a zombie or dead process, or a line that does not parse.</summary>
    internal static long? ParseStartTime(string stat)
    {
        // Field 2, comm, is in parentheses and may itself contain spaces and ')': the fields after it start after
        // the LAST ')'. From there, field 3 (state) is index 0 and field 22 (starttime) index 19.
        int close = stat.LastIndexOf(')');
        if (close < 0) return null;
        var f = stat[(close + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (f.Length < 20) return null;
        if (f[0] is "Z" or "X" or "x") return null;
        return long.TryParse(f[19], NumberStyles.None, CultureInfo.InvariantCulture, out long t) ? t : null;
    }

    /// <summary>Whether the process <paramref name="pid"/> that started at <paramref name="startTime"/> still runs.</summary>
    public static bool IsAlive(int pid, long startTime) => StartTime(pid) == startTime;

    /// <summary>
    /// Sends <paramref name="signal"/> to <paramref name="pid"/> if it is still the process that started at
    /// <paramref name="startTime"/>; false when it is gone. (The check and the kill are two steps: a PID reused in
    /// between is possible in principle; pidfd_send_signal would close that, not worth it for a daemon's own workers.)
    /// </summary>
    public static bool Signal(int pid, long startTime, int signal)
    {
        if (!IsAlive(pid, startTime)) return false;
        return kill(pid, signal) == 0;
    }

    /// <summary>The processes below <paramref name="pid"/> (children, their children, ...), from /proc's parent fields.</summary>
    public static List<int> Descendants(int pid)
    {
        var parent = new Dictionary<int, int>();
        foreach (string d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), NumberStyles.None, CultureInfo.InvariantCulture, out int p)) continue;
            string stat;
            try { stat = File.ReadAllText($"/proc/{p}/stat"); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            var f = stat[(stat.LastIndexOf(')') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length > 1 && int.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out int pp)) parent[p] = pp;
        }
        var found = new List<int>();
        var todo = new Queue<int>([pid]);
        while (todo.TryDequeue(out int cur))
            foreach (var (child, _) in parent.Where(kv => kv.Value == cur)) { found.Add(child); todo.Enqueue(child); }
        return found;
    }

    public const int SIGKILL = 9, SIGTERM = 15;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int sig);
}
