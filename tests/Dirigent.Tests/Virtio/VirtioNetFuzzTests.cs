using Dirigent.Devices.Net;
using Dirigent.Devices.Virtio;
using Dirigent.Devices.Virtio.Net;
using Dirigent.Machine.Memory;
using Xunit.Abstractions;

namespace Dirigent.Tests.Virtio;

/// <summary>
/// Random receive and transmit queues (descriptors anywhere, in or out of RAM, random flags and links, random avail
/// indices) under random feature sets, with random packets and headers from the backend. The device must never
/// throw, must write only into buffers the driver marked device-writable, and must hand the backend only headers
/// the driver negotiated.
/// </summary>
[Trait("Category", "Net")]
public class VirtioNetFuzzTests(ITestOutputHelper output)
{
    private const ulong Ram = 0x1_0000, RxRings = 0x1000, TxRings = 0x3000, Buffers = 0x8000;
    private const int Size = 16;

    [Theory]
    [InlineData(30_000, 1)]
    [InlineData(30_000, 2)]
    public void RandomQueuesNeverCrashAndStayInsideWritableBuffers(int iterations, int seed)
    {
        var rnd = new Random(seed);
        using var mem = new GuestMemory(Ram);
        var backend = new FakeBackend { Offloads = NetOffloads.Checksum | NetOffloads.Tso4 | NetOffloads.Tso6 | NetOffloads.TsoEcn };
        bool failed = false;
        var transport = new FakeTransport(mem, 2, _ => failed = true);
        var net = new VirtioNet(backend, [0x52, 0x54, 0, 1, 2, 3]);
        var rx = new DriverQueue(mem, transport.Queue(0), RxRings, Buffers);
        var tx = new DriverQueue(mem, transport.Queue(1), TxRings, Buffers);
        var allowed = new List<(ulong Start, ulong End)>();
        var writes = new List<(ulong Gpa, ulong Len)>();
        mem.ExternalWrite += (gpa, len) => writes.Add((gpa, len));
        int delivered = 0, sent = 0, resets = 0;
        ulong features = 0;
        byte[]? pending = null;

        for (int it = 0; it < iterations; it++)
        {
            if (it == 0 || failed || rnd.Next(100) == 0)
            {
                net.Reset();
                transport.Queue(0).Reset();
                transport.Queue(1).Reset();
                features = VirtioConstants.Version1 | (ulong)rnd.NextInt64() & (net.DeviceFeatures | VirtioConstants.RingEventIdx);
                transport.NegotiatedFeatures = features;
                rx.Enable(features);
                tx.Enable(features);
                net.Activate(transport);
                failed = false;
                allowed.Clear();
                resets++;
            }
            bool receive = rnd.Next(2) == 0;
            ulong rings = receive ? RxRings : TxRings;
            var q = transport.Queue(receive ? 0 : 1);
            // Half the time well-formed single-buffer chains, so packets get through and the merging paths run.
            bool wellFormed = rnd.Next(2) == 0;
            for (int i = 0; i < Size; i++)
            {
                ulong d = rings + 16UL * (ulong)i;
                if (wellFormed)
                {
                    ulong a = Buffers + (ulong)rnd.Next(0, (int)(Ram - Buffers) - 16);
                    uint l = (uint)rnd.Next(1, (int)Math.Min(5000, Ram - a));
                    mem.WriteU64(d, a);
                    mem.WriteU32(d + 8, l);
                    mem.WriteU16(d + 12, receive ? VirtioConstants.DescFlagWrite : (ushort)0);
                    mem.WriteU16(d + 14, 0);
                    if (receive) allowed.Add((a, a + l));
                    mem.WriteU16(rings + 0x100 + 4 + 2UL * (ulong)i, (ushort)i);
                    continue;
                }
                ulong addr = rnd.Next(10) switch
                {
                    0 => (ulong)rnd.NextInt64(),
                    1 => Ram - (ulong)rnd.Next(1, 4096),
                    _ => Buffers + (ulong)rnd.Next(0, (int)(Ram - Buffers)),
                };
                uint len = (uint)rnd.Next(0, 5000);
                ushort flags = (ushort)rnd.Next(rnd.Next(8) == 0 ? 8 : 4); // INDIRECT (never negotiated) now and then
                mem.WriteU64(d, addr);
                mem.WriteU32(d + 8, len);
                mem.WriteU16(d + 12, flags);
                mem.WriteU16(d + 14, (ushort)(rnd.Next(20) == 0 ? rnd.Next(65536) : rnd.Next(Size)));
                if ((flags & VirtioConstants.DescFlagWrite) != 0 && len > 0) allowed.Add((addr, addr + len));
                mem.WriteU16(rings + 0x100 + 4 + 2UL * (ulong)i, (ushort)(rnd.Next(20) == 0 ? rnd.Next(65536) : rnd.Next(Size)));
            }
            ushort availIdx = rnd.Next(30) == 0 ? (ushort)rnd.Next(65536) : (ushort)(q.LastAvailIndex + rnd.Next(0, 5));
            mem.WriteU16(rings + 0x100 + 2, availIdx);
            writes.Clear();
            if (receive)
            {
                // As a backend must: a refused packet is offered again until it is taken.
                if (pending == null)
                {
                    pending = new byte[rnd.Next(0, 4) == 0 ? rnd.Next(0, 64) : rnd.Next(12, 12000)];
                    rnd.NextBytes(pending);
                    if (pending.Length >= 2 && rnd.Next(2) == 0) { pending[0] &= 3; pending[1] = (byte)rnd.Next(0, 5); }
                }
                long before = net.RxPackets;
                if (backend.Receiver!.TryReceive(pending))
                {
                    pending = null;
                    delivered++;
                }
                CheckWrites(writes, allowed, it);
                // Only a delivered packet returns every chain the device took; until then it may write into them.
                if (net.RxPackets != before) allowed.Clear();
            }
            else
            {
                int before = backend.Sent.Count;
                net.QueueNotify(VirtioNet.TransmitQueue);
                CheckWrites(writes, [], it);
                foreach (var p in backend.Sent.Skip(before))
                {
                    Assert.InRange(p.Length, 26, INetBackend.MaxPacketLength);
                    if ((p[0] & VirtioNet.HdrFlagNeedsCsum) != 0) Assert.True((features & VirtioNet.Csum) != 0, $"iteration {it}: NEEDS_CSUM without CSUM");
                    Assert.Equal(0, p[0] & ~VirtioNet.HdrFlagNeedsCsum);
                    byte gso = p[1];
                    if (gso != 0)
                    {
                        ulong need = (gso & 0x7f) == VirtioNet.GsoTcpV4 ? VirtioNet.HostTso4 : VirtioNet.HostTso6;
                        Assert.True((gso & 0x7f) is VirtioNet.GsoTcpV4 or VirtioNet.GsoTcpV6 && (features & need) != 0, $"iteration {it}: gso_type {gso}");
                        Assert.True((gso & VirtioNet.GsoEcn) == 0 || (features & VirtioNet.HostEcn) != 0);
                    }
                    sent++;
                }
                backend.Sent.Clear();
            }
        }
        output.WriteLine($"{iterations} iterations: {delivered} packets taken by the device, {net.RxPackets} of them written to " +
            $"the guest; {sent} sent; {resets} resets");
        Assert.True(net.RxPackets > 0 && sent > 0, "the fuzzer never got a packet through: it tests nothing");
    }

    private static void CheckWrites(List<(ulong Gpa, ulong Len)> writes, List<(ulong Start, ulong End)> allowed, int it)
    {
        foreach (var (gpa, len) in writes)
            Assert.True(allowed.Any(a => gpa >= a.Start && gpa + len <= a.End),
                $"iteration {it}: device wrote 0x{gpa:x}+0x{len:x} outside every device-writable buffer");
    }
}
