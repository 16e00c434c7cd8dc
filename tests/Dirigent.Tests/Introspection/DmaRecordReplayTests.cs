using Dirigent.Cli;
using Dirigent.Machine.Introspection.RecordReplay;
using Dirigent.Tests.Boot;
using Dirigent.Vmm;
using Dirigent.Vmm.Introspection;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// Record and replay of device DMA on a bare-metal guest assembled here that drives the virtio entropy device
/// (`--rng`) itself: it sets the device up through PCI config space and the modern transport's BAR, makes one
/// 64-byte buffer available, notifies, and prints letters made from the bytes the device wrote. The bytes come from
/// the host's CSPRNG, so the recording's output is its own; the replay (device cut off) must print the same from the
/// log, and a log whose DMA bytes were changed, or whose DMA write was moved to an instruction that made no device
/// access, must not pass for the recording.
/// </summary>
public class DmaRecordReplayTests
{
    private const uint LoadAddr = 0x10_0000;
    private const uint Desc = 0x20_0000, Avail = 0x20_1000, Used = 0x20_2000, Buf = 0x20_3000;
    private const int BufLen = 64;

    /// <summary>
    /// A Multiboot kernel: finds the entropy device at 00:01.0 (the only PCI function after the host bridge with just
    /// --rng; anything else ends the run with debug-exit code 0x3E), enables its memory BAR, negotiates VERSION_1,
    /// sets up queue 0 with 4 entries, offers one device-writable 64-byte buffer, notifies, prints 16 letters from the
    /// buffer's first bytes, the used index as a digit, and a newline, then exits with the low 5 bits of a hash of
    /// the buffer through the debug-exit port.
    /// </summary>
    internal static byte[] BuildGuest()
    {
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        Label wrong = a.CreateLabel(), print = a.CreateLabel(), hash = a.CreateLabel();
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(LoadAddr + 32);
        a.cli();
        a.mov(esp, 0x8_0000);
        // Vendor/device ID of 00:01.0: 0x1AF4 / 0x1044 (virtio 1.x entropy).
        a.mov(eax, 0x8000_0000u | (1 << 11));
        a.mov(dx, 0xCF8); a.@out(dx, eax);
        a.mov(dx, 0xCFC); a.@in(eax, dx);
        a.cmp(eax, 0x1044_1AF4);
        a.jne(wrong);
        // BAR 0 (32-bit memory), then memory space and bus mastering on.
        a.mov(eax, 0x8000_0000u | (1 << 11) | 0x10);
        a.mov(dx, 0xCF8); a.@out(dx, eax);
        a.mov(dx, 0xCFC); a.@in(eax, dx);
        a.and(eax, 0xFFFF_FFF0u);
        a.mov(ebp, eax);
        a.mov(eax, 0x8000_0000u | (1 << 11) | 0x04);
        a.mov(dx, 0xCF8); a.@out(dx, eax);
        a.mov(dx, 0xCFC); a.mov(ax, 6); a.@out(dx, ax);
        // Common configuration (virtio 1.2 §4.1.4.3): ACKNOWLEDGE, DRIVER, VERSION_1 (bit 32), FEATURES_OK.
        a.mov(__byte_ptr[ebp + 0x14], 1);
        a.mov(__byte_ptr[ebp + 0x14], 3);
        a.mov(__dword_ptr[ebp + 0x08], 1);
        a.mov(__dword_ptr[ebp + 0x0C], 1);
        a.mov(__byte_ptr[ebp + 0x14], 0xB);
        a.movzx(eax, __byte_ptr[ebp + 0x14]);
        a.test(al, 8);
        a.jz(wrong);
        // Queue 0: 4 entries, rings in RAM, enabled; then DRIVER_OK.
        a.mov(__word_ptr[ebp + 0x16], 0);
        a.mov(__word_ptr[ebp + 0x18], 4);
        a.mov(__dword_ptr[ebp + 0x20], Desc); a.mov(__dword_ptr[ebp + 0x24], 0);
        a.mov(__dword_ptr[ebp + 0x28], Avail); a.mov(__dword_ptr[ebp + 0x2C], 0);
        a.mov(__dword_ptr[ebp + 0x30], Used); a.mov(__dword_ptr[ebp + 0x34], 0);
        a.mov(__word_ptr[ebp + 0x1C], 1);
        a.mov(__byte_ptr[ebp + 0x14], 0xF);
        // Descriptor 0: the buffer, device-writable; avail: no interrupt, ring[0] = 0, idx = 1; notify queue 0.
        a.mov(__dword_ptr[Desc], Buf); a.mov(__dword_ptr[Desc + 4], 0);
        a.mov(__dword_ptr[Desc + 8], BufLen);
        a.mov(__word_ptr[Desc + 12], 2); a.mov(__word_ptr[Desc + 14], 0);
        a.mov(__word_ptr[Avail], 1);
        a.mov(__word_ptr[Avail + 4], 0);
        a.mov(__word_ptr[Avail + 2], 1);
        a.mov(__word_ptr[ebp + 0x3000], 0);
        // 16 letters from the buffer, then the used index as a digit.
        a.xor(esi, esi);
        a.Label(ref print);
        a.movzx(eax, __byte_ptr[esi + (int)Buf]);
        a.and(eax, 15);
        a.add(eax, 'A');
        Dirigent.Tests.Lifecycle.TinyGuest.EmitPutc(a);
        a.inc(esi);
        a.cmp(esi, 16);
        a.jb(print);
        a.movzx(eax, __word_ptr[Used + 2]);
        a.add(eax, '0');
        Dirigent.Tests.Lifecycle.TinyGuest.EmitPutc(a);
        a.mov(al, (byte)'\n');
        Dirigent.Tests.Lifecycle.TinyGuest.EmitPutc(a);
        // Exit code from all 64 bytes.
        a.xor(edi, edi);
        a.xor(esi, esi);
        a.Label(ref hash);
        a.rol(edi, 5);
        a.xor(edi, __dword_ptr[esi + (int)Buf]);
        a.add(esi, 4);
        a.cmp(esi, BufLen);
        a.jb(hash);
        a.mov(eax, edi);
        a.shr(eax, 16);
        a.xor(eax, edi);
        a.and(eax, 0x1F); // below 0x3E, the code for a device not found
        a.@out(0xF4, al);
        a.hlt();
        a.Label(ref wrong);
        a.mov(al, 0x3E);
        a.@out(0xF4, al);
        a.hlt();
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        return ms.ToArray();
    }

    private sealed class Guest : IDisposable
    {
        public readonly string Dir = Path.Combine(Path.GetTempPath(), $"dirigent-rr-dma-{Environment.ProcessId}-{Guid.NewGuid():N}");
        public readonly string Kernel;
        public string Recording => Path.Combine(Dir, "rec");
        public string LogPath => Path.Combine(Recording, RecordingManifest.LogFileName);

        public Guest()
        {
            Directory.CreateDirectory(Dir);
            Kernel = Path.Combine(Dir, "kernel.bin");
            File.WriteAllBytes(Kernel, BuildGuest());
        }

        public VmSpec Spec => new() { Kernel = Kernel, MemoryBytes = 16UL << 20, Accel = AccelKind.Emu, Rng = true };

        public (int rc, GuestRunner r) Record()
        {
            var (rc, r) = Run(Spec, new RunOptions { RecordDir = Recording });
            // Odd: a debug exit; 0x3E << 1 | 1 would mean the guest did not find or set up the device.
            Assert.True(rc % 2 == 1 && rc != (0x3E << 1 | 1), $"recording: exit status {rc}; errors: {r.Errors}; output: {r.Output}");
            Assert.Matches("^[A-P]{16}1\n$", r.Output);
            return (rc, r);
        }

        public List<ReplayEvent> ReadLog()
        {
            using var reader = new EventLogReader(File.OpenRead(LogPath));
            var list = new List<ReplayEvent>();
            while (reader.TryRead(out var e)) list.Add(e);
            return list;
        }

        public void WriteLog(IEnumerable<ReplayEvent> log)
        {
            using var w = new EventLogWriter(File.Create(LogPath));
            foreach (var e in log) w.Write(e);
        }

        public void Dispose() { try { Directory.Delete(Dir, recursive: true); } catch (IOException) { } }
    }

    private static readonly TimeSpan Guard = TimeSpan.FromMinutes(2);

    private static (int rc, GuestRunner r) Run(VmSpec spec, RunOptions opts)
    {
        var r = new GuestRunner();
        return (r.Run(spec, Guard, opts), r);
    }

    /// <summary>The buffer's DMA event: the device's 64 random bytes, written during the notifying instruction.</summary>
    private static int BufferWrite(List<ReplayEvent> log) =>
        log.FindIndex(e => e.Kind == EventKind.DmaWrite && e.Address == Buf && e.Data?.Length == BufLen);

    [Fact]
    public void EntropyTheGuestTookIsReplayedFromTheLog()
    {
        using var g = new Guest();
        var (rc, rec) = g.Record();
        var log = g.ReadLog();
        int at = BufferWrite(log);
        Assert.True(at >= 0, "no 64-byte DMA write of the buffer in the log");
        // The used element and index, written by the same notification at the same count.
        var notify = log[at].Icount;
        Assert.Contains(log, e => e.Kind == EventKind.DmaWrite && e.Icount == notify && e.Address == Used + 2 && e.Data!.Length == 2 && e.Data[0] == 1);
        Assert.Contains(log, e => e.Kind == EventKind.DmaWrite && e.Icount == notify && e.Address == Used + 4 && e.Data!.Length == 8);
        Assert.DoesNotContain(log, e => e.Kind == EventKind.DmaWriteBetween);
        var m = System.Text.Json.JsonSerializer.Deserialize<RecordingManifest>(File.ReadAllText(Path.Combine(g.Recording, RecordingManifest.FileName)),
            new System.Text.Json.JsonSerializerOptions { PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.CamelCase })!;
        Assert.True(m.Rng);
        Assert.Equal(2, m.Version);
        Assert.Equal(3, m.DmaWrites);
        Assert.Equal(BufLen + 8 + 2, m.DmaBytes);

        for (int k = 0; k < 2; k++)
        {
            var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
            Assert.True(rrc == rc, $"replay {k}: exit status {rrc}, recorded {rc}; errors: {rep.Errors}");
            Assert.Equal(rec.Output, rep.Output);
            Assert.Contains($"replay matches the recording: {m.Instructions} instructions", rep.Errors);
        }
    }

    [Fact]
    public void ChangedDmaBytesMakeTheReplayDifferFromTheRecording()
    {
        using var g = new Guest();
        var (_, rec) = g.Record();
        var log = g.ReadLog();
        int at = BufferWrite(log);
        var ev = log[at];
        // The first byte picks the first letter: another low nibble prints another letter.
        ev.Data = (byte[])ev.Data!.Clone();
        ev.Data[0] ^= 0x05;
        log[at] = ev;
        g.WriteLog(log);
        var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
        Assert.Equal(ExitCodes.VmmFailure, rrc);
        Assert.True(rep.Output.Length == rec.Output.Length, $"replay printed '{rep.Output}'; errors: {rep.Errors}");
        Assert.NotEqual(rec.Output, rep.Output);
        Assert.Equal(rec.Output[1..], rep.Output[1..]);
        Assert.Contains("dirigent run --replay: replay differs from the recording: memory SHA-256 ", rep.Errors);
        Assert.Contains("console output SHA-256 ", rep.Errors);
    }

    [Fact]
    public void DmaWriteMovedToAnInstructionWithoutDeviceAccessIsADivergence()
    {
        using var g = new Guest();
        g.Record();
        var log = g.ReadLog();
        int at = BufferWrite(log);
        var ev = log[at];
        // One instruction earlier (the avail index store: RAM, no device access) nothing applies it; the replay
        // passes it and stops at the next event it checks.
        ev.Icount--;
        log[at] = ev;
        g.WriteLog(log);
        var (rrc, rep) = Run(new VmSpec(), new RunOptions { ReplayDir = g.Recording });
        Assert.Equal(ExitCodes.VmmFailure, rrc);
        var match = System.Text.RegularExpressions.Regex.Match(rep.Errors,
            @"dirigent run --replay: replay diverged at instruction (\d+): .*device write \(DMA\) of 64 bytes at 0x203000 at instruction (\d+)");
        Assert.True(match.Success, rep.Errors);
        Assert.Equal(ev.Icount, ulong.Parse(match.Groups[2].Value));
        Assert.True(ulong.Parse(match.Groups[1].Value) > ev.Icount, rep.Errors);
    }

    /// <summary>
    /// The session alone: device writes on the vCPU thread are logged where they happened (between instructions,
    /// or during the instruction's device access), whether copied in or written through a ring pointer, long ones in
    /// pieces; one from another thread makes the recording unusable instead of landing at a wrong count.
    /// </summary>
    [Fact]
    public unsafe void SessionLogsDeviceWritesWithTheirPlaceAndRefusesOnesFromOtherThreads()
    {
        using var mem = new Dirigent.Machine.Memory.GuestMemory(4 << 20);
        var ms = new MemoryStream();
        var big = new byte[EventLogFormat.MaxDmaBytes + 10];
        new Random(5).NextBytes(big);
        using (var rr = RecordReplaySession.Record(ms))
        {
            ulong icount = 100;
            rr.Bind(mem, () => icount);
            Assert.True(mem.TryWrite(0x1000, [1, 2, 3]));
            icount = 105;
            rr.DeviceAccess++;
            Assert.True(mem.TryWrite(0x10_0000, big));
            *(ushort*)mem.TryGetHostPointer(0x2002, 2) = 0x0107;
            mem.MarkDirty(0x2002, 2);
            rr.DeviceAccess--;
            Assert.Null(rr.RecordError);
            var other = new Thread(() => mem.TryWrite(0x3000, [9]));
            other.Start();
            other.Join();
            Assert.Equal("a device wrote 1 bytes of guest memory at 0x3000 outside the vCPU thread", rr.RecordError);
            rr.LogEnd(106, RecordedEnd.PowerOff, 0);
            Assert.Null(mem.DeviceWrites);
            Assert.Equal((4L, 3L + big.Length + 2), (rr.DmaWrites, rr.DmaBytes));
        }
        using var reader = new EventLogReader(new MemoryStream(ms.ToArray()));
        var log = new List<ReplayEvent>();
        while (reader.TryRead(out var e)) log.Add(e);
        Assert.Equal(
            [(100UL, EventKind.DmaWriteBetween, 0x1000UL, "010203"),
             (105UL, EventKind.DmaWrite, 0x10_0000UL, Convert.ToHexString(big, 0, EventLogFormat.MaxDmaBytes)),
             (105UL, EventKind.DmaWrite, 0x10_0000UL + (ulong)EventLogFormat.MaxDmaBytes, Convert.ToHexString(big, EventLogFormat.MaxDmaBytes, 10)),
             (105UL, EventKind.DmaWrite, 0x2002UL, "0701"),
             (106UL, EventKind.End, (ulong)RecordedEnd.PowerOff, "")],
            log.Select(e => (e.Icount, e.Kind, e.Address, Convert.ToHexString(e.Data ?? []))).ToList());
    }

    /// <summary>A network card's device side that takes packets while it has room (receive buffers).</summary>
    private sealed class Card : Dirigent.Devices.Net.INetReceiver
    {
        public readonly List<int> Taken = new();
        public int Room;
        public int Offers;
        public bool TryReceive(ReadOnlySpan<byte> packet)
        {
            Offers++;
            if (Room == 0) return false;
            Room--;
            Taken.Add(BitConverter.ToInt32(packet));
            return true;
        }
    }

    /// <summary>
    /// The recording's network backend alone: packets from the backend's thread wait for the vCPU's boundary (host
    /// work), reach the card in order, none lost or doubled, with flow control both ways: a full queue makes the
    /// backend hold its packet until there is room, a card without buffers gets the packet again after it says it
    /// has some.
    /// </summary>
    [Fact]
    public void RecordedNetBackendHandsPacketsToTheCardOnlyAtBoundariesInOrder()
    {
        using var rr = RecordReplaySession.Record(new MemoryStream());
        var inner = new Dirigent.Tests.Virtio.FakeBackend();
        var card = new Card { Room = 10 };
        var backend = new Dirigent.Vmm.Net.RecordedNetBackend(inner, rr);
        backend.Start(card);
        var fromHost = inner.Receiver!;
        int next = 0;
        bool Deliver() => fromHost.TryReceive(BitConverter.GetBytes(next));
        for (; next < Dirigent.Vmm.Net.RecordedNetBackend.MaxQueued; next++) Assert.True(Deliver());
        Assert.False(Deliver()); // full: the backend holds packet 64
        Assert.Equal(0, card.Offers); // nothing reaches the card off the vCPU's boundary
        Assert.True(rr.HostWorkPending);
        rr.RunHostWork();
        Assert.Equal(Enumerable.Range(0, 10), card.Taken);
        Assert.Equal(11, card.Offers); // the 11th was refused: no buffers
        Assert.Equal(1, inner.ReadyCalls); // room in the queue again: the backend may offer what it holds
        Assert.True(Deliver());
        next++;
        Assert.False(rr.HostWorkPending); // the card is still full: no use offering
        card.Room = 1000;
        backend.ReceiveReady(); // the driver posted buffers
        Assert.Equal(2, inner.ReadyCalls);
        rr.RunHostWork();
        Assert.Equal(Enumerable.Range(0, next), card.Taken);
        Assert.False(rr.HostWorkPending);
    }

    [Fact]
    public void RecordTakesVirtioDevicesButStillOneVcpu()
    {
        var spec = new VmSpec { Kernel = "k", Rng = true, Disks = [new DiskConfig("d.img", DiskFormat.Raw, true)] };
        spec.Nics.Add(NicConfig.Parse("user", 0));
        Assert.Null(RunRecorder.Unsupported(spec));
        spec.Cpus = 2;
        Assert.Equal("--record needs one vCPU (--cpus 2): the interleaving of vCPUs is not recorded", RunRecorder.Unsupported(spec));
    }
}
