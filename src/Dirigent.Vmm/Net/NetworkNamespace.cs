using System.Runtime.ExceptionServices;

namespace Dirigent.Vmm.Net;

/// <summary>
/// Runs code inside another network namespace without moving the process: a dedicated thread joins the namespace
/// with setns(CLONE_NEWNET) (allowed per thread, even in a multi-threaded process), runs the code, and rejoins its
/// original namespace before it ends. What the code creates there (a TAP fd, a socket) stays bound to that
/// namespace and can be used from any thread afterwards.
/// </summary>
internal static class NetworkNamespace
{
    /// <summary>A name as `ip netns` knows it (under /run/netns), or a path such as /proc/PID/ns/net.</summary>
    public static string PathOf(string netns) => netns.Contains('/') ? netns : Path.Combine("/run/netns", netns);

    public static T RunIn<T>(string netns, Func<T> action)
    {
        string path = PathOf(netns);
        T result = default!;
        ExceptionDispatchInfo? error = null;
        var t = new Thread(() =>
        {
            try { result = RunOnThisThread(path, netns, action); }
            catch (Exception e) { error = ExceptionDispatchInfo.Capture(e); }
        }) { IsBackground = true, Name = $"netns {netns}" };
        t.Start();
        t.Join();
        error?.Throw();
        return result;
    }

    private static T RunOnThisThread<T>(string path, string netns, Func<T> action)
    {
        int target = NetNative.Open(path, NetNative.O_RDONLY | NetNative.O_CLOEXEC);
        if (target < 0)
        {
            int e = NetNative.LastErrno;
            throw new NetBackendException(e == NetNative.ENOENT
                ? $"network namespace '{netns}' does not exist ({path} not found)"
                : $"cannot open network namespace '{netns}' ({path}): {NetNative.ErrorText(e)}");
        }
        int home = NetNative.Open("/proc/thread-self/ns/net", NetNative.O_RDONLY | NetNative.O_CLOEXEC);
        try
        {
            if (home < 0)
                throw new NetBackendException($"cannot open this thread's network namespace: {NetNative.ErrorText(NetNative.LastErrno)}");
            if (NetNative.SetNs(target, NetNative.CLONE_NEWNET) != 0)
            {
                int e = NetNative.LastErrno;
                throw new NetBackendException(e == NetNative.EINVAL
                    ? $"'{netns}' ({path}) is not a network namespace"
                    : $"cannot enter network namespace '{netns}': {NetNative.ErrorText(e)}");
            }
            try { return action(); }
            finally
            {
                // The thread is about to end anyway; rejoining keeps the process's threads uniform should the runtime
                // ever reuse it.
                NetNative.SetNs(home, NetNative.CLONE_NEWNET);
            }
        }
        finally
        {
            if (home >= 0) NetNative.Close(home);
            NetNative.Close(target);
        }
    }
}

/// <summary>A host network backend could not be set up; the message is one line for the user.</summary>
public sealed class NetBackendException(string message) : Exception(message);
