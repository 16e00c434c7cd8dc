using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Dirigent.Vmm.Migration;

/// <summary>What one message of the migration stream carries.</summary>
internal enum MigrationFrame : byte
{
    /// <summary>JSON: the VM spec and the source's accelerator (target builds memory from it).</summary>
    Spec = 1,
    /// <summary>u32 count, then count × (u64 guest-physical address, 4096 bytes).</summary>
    Pages = 2,
    /// <summary>u32 count, then count × u64 guest-physical address of a page that is all zeros.</summary>
    ZeroPages = 3,
    /// <summary>JSON: the snapshot manifest (component records, CPU states) taken with the VM paused.</summary>
    State = 4,
    /// <summary>Target → source: u8 0 = the target has the VM and runs it, else a UTF-8 error line follows.</summary>
    Reply = 5,
    /// <summary>
    /// Target → source, after an OK reply, once the target's vCPUs run: u64 nanoseconds from its reply to that moment
    /// (for the record). The source, if it waits for it, measures the downtime up to here: pause to resume elsewhere.
    /// </summary>
    Resumed = 6,
}

/// <summary>
/// The live-migration wire format over one stream (a Unix or TCP socket): an 8-byte magic, then frames of
/// [u8 type][u32 length][payload], little-endian. Page contents travel raw; everything else is JSON. Plain and
/// versioned (the magic carries the version) so either end can refuse a stream it does not understand.
/// </summary>
internal sealed class MigrationChannel : IDisposable
{
    public static readonly byte[] Magic = "DIRMIG01"u8.ToArray();
    /// <summary>Pages per Pages frame: 256 × 4 KiB = 1 MiB.</summary>
    public const int PagesPerFrame = 256;
    /// <summary>The largest frame a peer may send (a JSON state of a 64-vCPU VM fits easily).</summary>
    public const int MaxFrame = 64 << 20;

    private readonly Socket _socket;
    private readonly Stream _stream;
    public long BytesSent { get; private set; }

    private MigrationChannel(Socket socket)
    {
        _socket = socket;
        _stream = new BufferedStream(new NetworkStream(socket, ownsSocket: false), 1 << 20);
    }

    /// <summary>Parses <c>unix:PATH</c> or <c>tcp:HOST:PORT</c>; throws <see cref="FormatException"/> with one line.</summary>
    public static EndPoint ParseEndpoint(string uri)
    {
        if (uri.StartsWith("unix:", StringComparison.Ordinal))
        {
            string path = uri[5..];
            if (path.Length == 0) throw new FormatException($"'{uri}': empty socket path");
            return new UnixDomainSocketEndPoint(path);
        }
        if (uri.StartsWith("tcp:", StringComparison.Ordinal))
        {
            string rest = uri[4..];
            int colon = rest.LastIndexOf(':');
            if (colon <= 0 || !int.TryParse(rest[(colon + 1)..], out int port) || port is < 1 or > 65535)
                throw new FormatException($"'{uri}': expected tcp:HOST:PORT");
            string host = rest[..colon].Trim('[', ']');
            if (IPAddress.TryParse(host, out var ip)) return new IPEndPoint(ip, port);
            var addrs = Dns.GetHostAddresses(host);
            if (addrs.Length == 0) throw new FormatException($"'{uri}': cannot resolve {host}");
            return new IPEndPoint(addrs[0], port);
        }
        throw new FormatException($"'{uri}': expected unix:PATH or tcp:HOST:PORT");
    }

    public static MigrationChannel Connect(string uri)
    {
        var ep = ParseEndpoint(uri);
        var s = new Socket(ep.AddressFamily, SocketType.Stream, ep is UnixDomainSocketEndPoint ? ProtocolType.Unspecified : ProtocolType.Tcp);
        try
        {
            s.Connect(ep);
            if (ep is IPEndPoint) s.NoDelay = true;
            var c = new MigrationChannel(s);
            c._stream.Write(Magic);
            return c;
        }
        catch { s.Dispose(); throw; }
    }

    /// <summary>Listens at <paramref name="uri"/> and accepts one source; the listening socket is closed after.</summary>
    public static MigrationChannel Accept(string uri, CancellationToken cancel, Action<string>? listening = null)
    {
        var ep = ParseEndpoint(uri);
        using var l = new Socket(ep.AddressFamily, SocketType.Stream, ep is UnixDomainSocketEndPoint ? ProtocolType.Unspecified : ProtocolType.Tcp);
        if (ep is UnixDomainSocketEndPoint && File.Exists(uri[5..])) File.Delete(uri[5..]);
        if (ep is IPEndPoint) l.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        l.Bind(ep);
        if (ep is UnixDomainSocketEndPoint && !OperatingSystem.IsWindows()) File.SetUnixFileMode(uri[5..], UnixFileMode.UserRead | UnixFileMode.UserWrite);
        l.Listen(1);
        listening?.Invoke(uri);
        try
        {
            var s = l.AcceptAsync(cancel).AsTask().GetAwaiter().GetResult();
            var c = new MigrationChannel(s);
            Span<byte> m = stackalloc byte[8];
            c.ReadExactly(m);
            if (!m.SequenceEqual(Magic)) { c.Dispose(); throw new InvalidDataException("the peer is not a Dirigent migration source (bad magic)"); }
            return c;
        }
        finally
        {
            if (ep is UnixDomainSocketEndPoint) try { File.Delete(uri[5..]); } catch (IOException) { }
        }
    }

    public void WriteFrame(MigrationFrame type, ReadOnlySpan<byte> payload)
    {
        Span<byte> h = stackalloc byte[5];
        h[0] = (byte)type;
        BinaryPrimitives.WriteUInt32LittleEndian(h[1..], (uint)payload.Length);
        _stream.Write(h);
        _stream.Write(payload);
        BytesSent += 5 + payload.Length;
    }

    public void WriteText(MigrationFrame type, string text) => WriteFrame(type, Encoding.UTF8.GetBytes(text));

    public void Flush() => _stream.Flush();

    /// <summary>
    /// How long one read or write may block before it fails with an <see cref="IOException"/>: a peer that stopped
    /// (a hung or frozen process, a cut link without a reset) ends the migration instead of hanging it.
    /// </summary>
    public TimeSpan IoTimeout
    {
        set
        {
            int ms = value == Timeout.InfiniteTimeSpan ? 0 : Math.Max(1, (int)value.TotalMilliseconds);
            _socket.ReceiveTimeout = ms;
            _socket.SendTimeout = ms;
        }
    }

    public (MigrationFrame Type, byte[] Payload) ReadFrame()
    {
        Span<byte> h = stackalloc byte[5];
        ReadExactly(h);
        uint len = BinaryPrimitives.ReadUInt32LittleEndian(h[1..]);
        if (len > MaxFrame) throw new InvalidDataException($"migration frame of {len} bytes is larger than allowed");
        var p = new byte[len];
        ReadExactly(p);
        return ((MigrationFrame)h[0], p);
    }

    private void ReadExactly(Span<byte> b)
    {
        try { _stream.ReadExactly(b); }
        catch (EndOfStreamException) { throw new InvalidDataException("the migration stream ended early (peer closed the connection)"); }
    }

    public void Dispose()
    {
        try { _stream.Dispose(); } catch (IOException) { }
        _socket.Dispose();
    }
}
