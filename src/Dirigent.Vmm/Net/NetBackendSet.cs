using Dirigent.Devices.Net;

namespace Dirigent.Vmm.Net;

/// <summary>The host backends of a VM's network cards, opened before the machine is built and closed after it.</summary>
public sealed class NetBackendSet : IDisposable
{
    private readonly List<(INetBackend Backend, byte[] Mac)> _cards = new();
    private readonly Dictionary<string, NetworkLog> _logs = new();

    public IReadOnlyList<(INetBackend Backend, byte[] Mac)> Cards => _cards;

    /// <summary>
    /// Opens every --net card's backend, a TAP or a user network (libslirp); throws <see cref="NetBackendException"/>
    /// (naming the TAP, the missing library or the port that cannot be forwarded) on the first failure. A backend
    /// that fails later (a TAP deleted under the VM) says so on <paramref name="err"/>; the guest sees a link that
    /// stays silent.
    /// </summary>
    public void OpenAll(IEnumerable<NicConfig> nics, TextWriter err)
    {
        int index = 0;
        foreach (var n in nics)
        {
            int nic = index++;
            if (n.User != null)
            {
                NetSinkhole? sinkhole = null;
                if (n.User.SinkholeLog is { } path)
                {
                    // One log for all the cards (each line names its card).
                    if (!_logs.TryGetValue(path, out var log))
                    {
                        try { _logs[path] = log = new NetworkLog(path); }
                        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                        {
                            throw new NetBackendException($"cannot open the network log {path}: {e.Message}");
                        }
                    }
                    sinkhole = new NetSinkhole(log, nic, n.User.HostForwards.Where(f => f.Udp).Select(f => f.GuestPort));
                }
                _cards.Add((SlirpBackend.Open(n.User, m => err.WriteLine($"dirigent: --net user: {m}"), sinkhole), n.Mac));
                continue;
            }
            if (n.Tap == null) throw new NetBackendException("a card has neither a TAP nor user networking");
            var tap = TapInterface.Open(n.Tap, n.Netns);
            tap.Failed = reason => err.WriteLine($"dirigent: --net: {reason}; the card receives nothing from now on");
            _cards.Add((tap, n.Mac));
        }
    }

    /// <summary>A replay's cards: backends that send and receive nothing, with the recorded MAC addresses.</summary>
    public void AddStandIns(IEnumerable<NicConfig> nics)
    {
        foreach (var n in nics) _cards.Add((new ReplayNetBackend("replay"), n.Mac));
    }

    /// <summary>A line in every card's network log that is not the guest's doing (a sandbox revert), so the log's
    /// readers can tell the runs apart.</summary>
    public void NoteInLogs(string what)
    {
        foreach (var l in _logs.Values) l.Write(w => w.WriteString("event", what));
    }

    public void Dispose()
    {
        foreach (var (b, _) in _cards) b.Dispose();
        _cards.Clear();
        // After the backends: their I/O threads, which write the log, have ended.
        foreach (var l in _logs.Values) l.Dispose();
        _logs.Clear();
    }
}
