using Dirigent.Devices.Net;

namespace Dirigent.Vmm.Net;

/// <summary>The host backends of a VM's network cards, opened before the machine is built and closed after it.</summary>
public sealed class NetBackendSet : IDisposable
{
    private readonly List<(INetBackend Backend, byte[] Mac)> _cards = new();

    public IReadOnlyList<(INetBackend Backend, byte[] Mac)> Cards => _cards;

    /// <summary>
    /// Opens every --net card's TAP; throws <see cref="NetBackendException"/> (naming the TAP) on the first failure.
    /// A TAP that fails later (its interface deleted under the VM) says so on <paramref name="err"/>; the guest sees
    /// a link that stays silent.
    /// </summary>
    public void OpenAll(IEnumerable<NicConfig> nics, TextWriter err)
    {
        foreach (var n in nics)
        {
            var tap = TapInterface.Open(n.Tap, n.Netns);
            tap.Failed = reason => err.WriteLine($"dirigent: --net: {reason}; the card receives nothing from now on");
            _cards.Add((tap, n.Mac));
        }
    }

    public void Dispose()
    {
        foreach (var (b, _) in _cards) b.Dispose();
        _cards.Clear();
    }
}
