using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Dirigent.Machine;
using Dirigent.Machine.Memory;
using Dirigent.Storage;
using Dirigent.Vmm.Migration;
using Dirigent.Vmm.Snapshots;

namespace Dirigent.Vmm;

/// <summary>Figures of the last outgoing migration.</summary>
/// <param name="DowntimeMs">
/// The guest's downtime as the source saw it: from its pause to the target's report that the VM runs there
/// (<see cref="MigrationFrame.Resumed"/>) when <see cref="Vm.Migrate"/> waited for it and it came, else to the target's
/// OK (<paramref name="AckMs"/>, which leaves out the target's own start). <paramref name="ResumeSeen"/> says which.
/// Measured on the source's clock: the resume report's one-way trip is included (an upper bound).
/// </param>
/// <param name="AckMs">From the source's pause to the target's OK (state restored, disks open, not yet running).</param>
/// <param name="TargetResumeMs">The target's own figure: from its OK to its vCPUs running (null without the report).</param>
public sealed record MigrationStats(double TotalMs, double DowntimeMs, int Rounds, long PagesSent, long BytesSent,
    double AckMs = 0, bool ResumeSeen = false, double? TargetResumeMs = null);

public sealed partial class Vm
{
    /// <summary>Pre-copy stops iterating when a round leaves fewer dirty pages than this (≈ 1 MiB)...</summary>
    public const int MigrationStopPages = 256;
    /// <summary>...or after this many rounds (a guest dirtying memory faster than the link sends it).</summary>
    public const int MigrationMaxRounds = 30;

    /// <summary>Figures of the last successful <see cref="Migrate"/>, null before one.</summary>
    public MigrationStats? LastMigration { get; private set; }

    /// <summary>No single read or write of a migration stream blocks longer than this (a stopped peer fails it).</summary>
    public static readonly TimeSpan MigrationIoTimeout = TimeSpan.FromSeconds(120);

    /// <summary>
    /// An incoming VM's stream, kept open after the OK reply until <see cref="Start"/> tells the source that the VM
    /// runs here (<see cref="MigrationFrame.Resumed"/>), with the time of that reply.
    /// </summary>
    private MigrationChannel? _resumeReport;
    private long _ackTimestamp;

    /// <summary>
    /// Live-migrates the VM to a target process listening at <paramref name="to"/> (<c>unix:PATH</c> or
    /// <c>tcp:HOST:PORT</c>): all RAM while the guest runs, then rounds of the pages it dirtied meanwhile (dirty
    /// tracking by the accelerator: KVM's dirty log, or the software CPU's soft TLB), then a pause for the last dirty
    /// pages and the device and CPU state, with the disks flushed and closed so the target can open them. On success
    /// the VM here ends with <see cref="VmExitKind.Migrated"/>; on any failure it throws <see cref="VmException"/>
    /// and the VM keeps running here, disks reopened.
    /// </summary>
    /// <param name="awaitResume">
    /// After the target's OK, wait up to this long for its report that the VM runs there, to measure the downtime to
    /// that moment (<see cref="MigrationStats.DowntimeMs"/>). Only where the target is another process that starts the
    /// VM by itself: a caller that starts the target VM after this returns must not wait.
    /// </param>
    public void Migrate(string to, TimeSpan? awaitResume = null)
    {
        lock (_cmd)
        {
            Require("migrate", VmState.Running, VmState.Paused);
            bool wasRunning = State == VmState.Running;
            MigrationChannel ch;
            try { ch = MigrationChannel.Connect(to); }
            catch (Exception e) when (e is FormatException or SocketException or IOException)
            {
                throw new VmException($"migration to {to}: {e.Message}", badInput: e is FormatException);
            }
            ch.IoTimeout = MigrationIoTimeout;
            var total = Stopwatch.StartNew();
            bool paused = !wasRunning, disksClosed = false;
            long downtimeStart = 0;
            using (ch)
            {
                try
                {
                    ch.WriteText(MigrationFrame.Spec, JsonSerializer.Serialize(new SnapshotManifest
                    {
                        Accel = Accel.Name, Spec = Spec, MemoryBytes = (long)Machine.Memory.RamSize,
                        // The guest-visible size of each disk, so the target can build its devices before it may open them.
                        Disks = Board.DiskSizes().Select((size, i) => new SnapshotDisk { Path = Spec.Disks[i].Path, Size = size }).ToList(),
                    }, SnapshotFiles.Json));
                    Accel.SetDirtyLogging(true);
                    long pages = SendAllMemory(ch);
                    int rounds = 1;
                    while (!paused && rounds < MigrationMaxRounds)
                    {
                        Accel.CollectDirtyPages();
                        var dirty = Machine.Memory.DirtyLog.Harvest();
                        pages += SendPages(ch, dirty);
                        rounds++;
                        if (dirty.Count < MigrationStopPages) break;
                    }
                    // Stop-and-copy: the guest stops here until the target runs it (or this fails and it resumes).
                    downtimeStart = Stopwatch.GetTimestamp();
                    if (!paused)
                    {
                        if (!PauseCore()) throw new VmException($"the VM ended during migration: {ExitReason}", badInput: false);
                        paused = true;
                    }
                    Accel.CollectDirtyPages();
                    pages += SendPages(ch, Machine.Memory.DirtyLog.Harvest());
                    Board.FlushDisks();
                    var m = CaptureManifest();
                    Board.CloseDisks();
                    disksClosed = true;
                    ch.WriteText(MigrationFrame.State, JsonSerializer.Serialize(m, SnapshotFiles.Json));
                    ch.Flush();
                    var (type, reply) = ch.ReadFrame();
                    if (type != MigrationFrame.Reply || reply.Length == 0)
                        throw new InvalidDataException("the target answered with something other than a reply");
                    if (reply[0] != 0)
                        throw new InvalidDataException($"the target refused the VM: {Encoding.UTF8.GetString(reply, 1, reply.Length - 1)}");
                    Accel.SetDirtyLogging(false);
                    double ack = Stopwatch.GetElapsedTime(downtimeStart).TotalMilliseconds;
                    // The VM is the target's now: whatever happens to the resume report, nothing here fails any more.
                    var (resumed, targetMs) = awaitResume is { } wait ? AwaitResumeReport(ch, wait) : (null, null);
                    LastMigration = new MigrationStats(total.Elapsed.TotalMilliseconds, resumed == null ? ack : Stopwatch.GetElapsedTime(downtimeStart, resumed.Value).TotalMilliseconds,
                        rounds, pages, ch.BytesSent, ack, resumed != null, targetMs);
                    Finish(VmState.Stopped, new VmExitReason(VmExitKind.Migrated, $"to {to}"));
                }
                catch (Exception e) when (e is IOException or SocketException or InvalidDataException or VmException
                                              or ObjectDisposedException or InvalidOperationException or BlockDeviceException)
                {
                    // The VM stays here: disks back, tracking off, running again if it was.
                    string why = e.Message;
                    try
                    {
                        if (disksClosed) Board.ReopenDisks(Spec.Disks.Select(DiskFactory.Open).ToList());
                    }
                    catch (BlockDeviceException re) { why += $"; reopening the disks failed too: {re.Message}"; }
                    try { Accel.SetDirtyLogging(false); } catch (InvalidOperationException) { }
                    if (State is VmState.Stopped or VmState.Crashed) throw new VmException($"migration to {to} failed: {why}", badInput: false);
                    if (paused && wasRunning) { ResumeCore(); State = VmState.Running; }
                    throw new VmException($"migration to {to} failed: {why}; the VM keeps running here", badInput: false);
                }
            }
        }
    }

    /// <summary>
    /// Reads the target's <see cref="MigrationFrame.Resumed"/> report (waiting at most <paramref name="wait"/>): the
    /// timestamp it arrived and the target's own OK-to-running figure, or nulls when it does not come (an older
    /// target, a target that failed to start the VM, a timeout).
    /// </summary>
    private static (long? At, double? TargetMs) AwaitResumeReport(MigrationChannel ch, TimeSpan wait)
    {
        try
        {
            ch.IoTimeout = wait;
            var (type, payload) = ch.ReadFrame();
            long at = Stopwatch.GetTimestamp();
            if (type != MigrationFrame.Resumed || payload.Length != 8) return (null, null);
            return (at, BinaryPrimitives.ReadUInt64LittleEndian(payload) / 1e6);
        }
        catch (Exception e) when (e is IOException or SocketException or InvalidDataException or ObjectDisposedException) { return (null, null); }
    }

    /// <summary>
    /// Tells the source of an incoming VM that it runs here now (called once the vCPUs run), then closes the stream.
    /// Best effort: the source may have stopped listening (it only waits when asked to).
    /// </summary>
    private void ReportResumed()
    {
        var ch = Interlocked.Exchange(ref _resumeReport, null);
        if (ch == null) return;
        using (ch)
        {
            try
            {
                var payload = new byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(payload, (ulong)Stopwatch.GetElapsedTime(_ackTimestamp).Ticks * 100);
                ch.WriteFrame(MigrationFrame.Resumed, payload);
                ch.Flush();
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { }
        }
    }

    private unsafe long SendAllMemory(MigrationChannel ch)
    {
        var all = new List<ulong>();
        foreach (var r in Machine.Memory.Regions)
            for (ulong off = 0; off < r.Size; off += GuestMemory.PageSize) all.Add(r.GuestBase + off);
        return SendPages(ch, all, skipZero: true);
    }

    /// <summary>Sends pages as Pages/ZeroPages frames; an all-zero page costs 8 bytes (or nothing on the first pass,
    /// since the target's RAM starts zeroed).</summary>
    private unsafe long SendPages(MigrationChannel ch, List<ulong> gpas, bool skipZero = false)
    {
        const int P = (int)GuestMemory.PageSize;
        var data = new byte[4 + MigrationChannel.PagesPerFrame * (8 + P)];
        var zeros = new byte[4 + MigrationChannel.PagesPerFrame * 8];
        int nData = 0, nZero = 0;
        long sent = 0;
        void FlushData()
        {
            if (nData == 0) return;
            BinaryPrimitives.WriteUInt32LittleEndian(data, (uint)nData);
            ch.WriteFrame(MigrationFrame.Pages, data.AsSpan(0, 4 + nData * (8 + P)));
            nData = 0;
        }
        void FlushZero()
        {
            if (nZero == 0) return;
            BinaryPrimitives.WriteUInt32LittleEndian(zeros, (uint)nZero);
            ch.WriteFrame(MigrationFrame.ZeroPages, zeros.AsSpan(0, 4 + nZero * 8));
            nZero = 0;
        }
        foreach (ulong gpa in gpas)
        {
            byte* host = Machine.Memory.TryGetHostPointer(gpa, GuestMemory.PageSize);
            if (host == null) continue;
            var page = new ReadOnlySpan<byte>(host, P);
            sent++;
            if (page.IndexOfAnyExcept((byte)0) < 0)
            {
                if (skipZero) { sent--; continue; }
                BinaryPrimitives.WriteUInt64LittleEndian(zeros.AsSpan(4 + nZero * 8), gpa);
                if (++nZero == MigrationChannel.PagesPerFrame) FlushZero();
                continue;
            }
            int at = 4 + nData * (8 + P);
            BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(at), gpa);
            page.CopyTo(data.AsSpan(at + 8));
            if (++nData == MigrationChannel.PagesPerFrame) FlushData();
        }
        FlushData();
        FlushZero();
        return sent;
    }

    /// <summary>
    /// Waits at <paramref name="from"/> (<c>unix:PATH</c> or <c>tcp:HOST:PORT</c>) for one incoming migration and
    /// returns the VM it brings, paused exactly where the source stopped (<see cref="Start"/> runs it), on
    /// <paramref name="accel"/> or the source's accelerator. The disks are opened only once the source has closed
    /// them. Anything wrong is a <see cref="VmException"/>, told to the source too (which keeps the VM).
    /// </summary>
    public static Vm Incoming(string from, AccelKind? accel, TextWriter log, CancellationToken cancel, Action<string>? listening = null)
    {
        MigrationChannel ch;
        try { ch = MigrationChannel.Accept(from, cancel, listening); }
        catch (Exception e) when (e is FormatException or SocketException or IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw new VmException($"--incoming {from}: {e.Message}", badInput: e is FormatException);
        }
        ch.IoTimeout = MigrationIoTimeout;
        bool keep = false;
        try
        {
            Vm? vm = null;
            try
            {
                var (t, payload) = ch.ReadFrame();
                if (t != MigrationFrame.Spec) throw new InvalidDataException("the stream does not start with the VM spec");
                var head = JsonSerializer.Deserialize<SnapshotManifest>(payload, SnapshotFiles.Json)
                           ?? throw new InvalidDataException("empty VM spec");
                var spec = head.Spec;
                if (spec.Cpus is < 1 or > 64 || spec.MemoryBytes == 0 || (long)spec.MemoryBytes != head.MemoryBytes)
                    throw new InvalidDataException("the VM spec is invalid");
                spec.Accel = accel ?? (head.Accel == "kvm" ? AccelKind.Kvm : AccelKind.Emu);
                if (head.Disks.Count != spec.Disks.Count || head.Disks.Any(d => d.Size <= 0))
                    throw new InvalidDataException("the disk sizes do not match the VM spec");
                // Everything is built now, while the source still runs (so the stop-and-copy only restores state):
                // the disks get stand-ins of the right size until the source has closed the real ones.
                vm = Build(spec, log, loadGuest: false,
                    openedDisks: head.Disks.Select((d, i) => (IBlockDevice)new StandInDisk(d.Size, spec.Disks[i].ReadOnly)).ToList());
                var memory = vm.Machine.Memory;
                SnapshotManifest? state = null;
                while (state == null)
                {
                    (t, payload) = ch.ReadFrame();
                    switch (t)
                    {
                        case MigrationFrame.Pages: ReceivePages(memory, payload, zero: false); break;
                        case MigrationFrame.ZeroPages: ReceivePages(memory, payload, zero: true); break;
                        case MigrationFrame.State:
                            state = JsonSerializer.Deserialize<SnapshotManifest>(payload, SnapshotFiles.Json)
                                    ?? throw new InvalidDataException("empty VM state");
                            break;
                        default: throw new InvalidDataException($"unexpected migration frame {(byte)t}");
                    }
                }
                state.Spec = spec;
                try { vm.Board.ReopenDisks(spec.Disks.Select(DiskFactory.Open).ToList()); }
                catch (Exception e) when (e is BlockDeviceException or ArgumentException)
                {
                    throw new InvalidDataException($"cannot open the disks here: {e.Message}");
                }
                vm.ApplyManifest(state);
                ch.WriteFrame(MigrationFrame.Reply, [0]);
                ch.Flush();
                // The stream stays open for the resume report (Start), which is how the source measures the downtime.
                vm._ackTimestamp = Stopwatch.GetTimestamp();
                vm._resumeReport = ch;
                keep = true;
                return vm;
            }
            catch (Exception e) when (e is IOException or InvalidDataException or JsonException or VmException or SocketException)
            {
                string why = e.Message;
                try
                {
                    ch.WriteFrame(MigrationFrame.Reply, [1, .. Encoding.UTF8.GetBytes(why)]);
                    ch.Flush();
                }
                catch (Exception we) when (we is IOException or SocketException or ObjectDisposedException) { }
                vm?.Dispose();
                throw new VmException($"incoming migration failed: {why}", badInput: false);
            }
        }
        finally
        {
            if (!keep) ch.Dispose();
        }
    }

    private static unsafe void ReceivePages(GuestMemory mem, byte[] payload, bool zero)
    {
        const int P = (int)GuestMemory.PageSize;
        if (payload.Length < 4) throw new InvalidDataException("short page frame");
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        int entry = zero ? 8 : 8 + P;
        if (n > MigrationChannel.PagesPerFrame || payload.Length != 4 + n * entry) throw new InvalidDataException("malformed page frame");
        for (int i = 0; i < n; i++)
        {
            int at = 4 + i * entry;
            ulong gpa = BinaryPrimitives.ReadUInt64LittleEndian(payload.AsSpan(at));
            // The source may only send pages of RAM the target has, page-aligned: never a write outside guest RAM.
            byte* host = (gpa & (GuestMemory.PageSize - 1)) == 0 ? mem.TryGetHostPointer(gpa, GuestMemory.PageSize) : null;
            if (host == null) throw new InvalidDataException($"page 0x{gpa:x} is not guest RAM here");
            var dst = new Span<byte>(host, P);
            if (zero) dst.Clear();
            else payload.AsSpan(at + 8, P).CopyTo(dst);
        }
    }

    /// <summary>A disk's place-holder while an incoming VM waits for the source to close the real image.</summary>
    private sealed class StandInDisk(long size, bool readOnly) : IBlockDevice
    {
        public long Size => size;
        public bool ReadOnly => readOnly;
        private static Exception NotYet() => new BlockDeviceException("the disk is not handed over yet");
        public void Read(long offset, Span<byte> buffer) => throw NotYet();
        public void Write(long offset, ReadOnlySpan<byte> data) => throw NotYet();
        public void Flush() { }
        public void Discard(long offset, long length) => throw NotYet();
        public void WriteZeroes(long offset, long length) => throw NotYet();
        public void Dispose() { }
    }
}
