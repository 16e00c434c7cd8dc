using System.Buffers.Binary;
using System.Text;
using Dirigent.Machine.State;
using Dirigent.Storage;

namespace Dirigent.Devices.Virtio.Block;

/// <summary>
/// virtio block device (virtio 1.2 §5.2) over an <see cref="IBlockDevice"/>: one request queue served by a worker
/// thread per device (disk I/O must not stall the vCPU). Requests IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES;
/// status OK, IOERR (bad range, host I/O error, write to a read-only disk) or UNSUPP (unknown type or flags).
/// A request without its 16-byte header or status byte is malformed: the queue stops and the device asks for a
/// reset (DEVICE_NEEDS_RESET).
/// </summary>
public sealed class VirtioBlock : IVirtioDevice, IDisposable
{
    // Feature bits (§5.2.3)
    public const int FeatureSizeMax = 1, FeatureSegMax = 2, FeatureRo = 5, FeatureBlkSize = 6, FeatureFlush = 9;
    public const int FeatureDiscard = 13, FeatureWriteZeroes = 14;
    // Request types and status (§5.2.6)
    public const uint TypeIn = 0, TypeOut = 1, TypeFlush = 4, TypeGetId = 8, TypeDiscard = 11, TypeWriteZeroes = 13;
    public const byte StatusOk = 0, StatusIoErr = 1, StatusUnsupp = 2;

    public const ushort QueueSize = 256;
    public const int SectorSize = 512, SerialLength = 20, ConfigSize = 0x3C;
    public const uint SizeMax = 1 << 20, SegMax = QueueSize - 2;
    public const uint MaxDiscardSectors = 1 << 16, MaxDiscardSegments = 32;

    private IBlockDevice _disk;
    private readonly byte[] _config = new byte[ConfigSize];
    private readonly byte[] _serial = new byte[SerialLength];
    private readonly byte[] _bounce = new byte[128 * 1024];
    private readonly VirtqueueChain _chain = new();
    private readonly object _run = new();
    private readonly Thread? _worker;
    private readonly AutoResetEvent _kick = new(false);
    private volatile bool _stop, _stopBatch;
    // Stopped (VM paused): the worker finishes the request in hand and takes no new one until Start.
    private volatile bool _paused;
    private IVirtioTransport? _transport;
    private RateLimiter? _limiter;

    public ushort DeviceType => VirtioConstants.DeviceBlock;
    public uint PciClassCode => 0x01_80_00; // mass storage, other (QEMU's virtio-blk-pci)
    public ulong DeviceFeatures { get; }
    public int QueueCount => 1;
    public ushort QueueMaxSize(int queue) => QueueSize;
    public int ConfigLength => ConfigSize;
    public long RequestsCompleted { get; private set; }

    // Completed reads and writes (status OK), for metrics: updated once per request by the worker, read from any
    // thread (Interlocked, so a reader on another core never sees a torn or stale-forever value). Not saved in
    // snapshots: they count this process's work, as a host's disk statistics do.
    private long _readBytes, _writeBytes, _readOps, _writeOps;

    /// <summary>Data bytes of completed reads and writes, and their counts, since the device was created.</summary>
    public BlockCounters Counters => new(Interlocked.Read(ref _readBytes), Interlocked.Read(ref _writeBytes),
        Interlocked.Read(ref _readOps), Interlocked.Read(ref _writeOps));

    /// <param name="serial">What GET_ID returns (up to 20 bytes, ASCII).</param>
    /// <param name="useWorkerThread">False runs requests on the notifying thread (deterministic, for tests).</param>
    public VirtioBlock(IBlockDevice disk, string serial, bool useWorkerThread = true)
    {
        _disk = disk;
        Encoding.ASCII.GetBytes(serial.Length > SerialLength ? serial[..SerialLength] : serial, _serial);
        ulong features = 1UL << FeatureSizeMax | 1UL << FeatureSegMax | 1UL << FeatureBlkSize | 1UL << FeatureFlush;
        features |= disk.ReadOnly ? 1UL << FeatureRo : 1UL << FeatureDiscard | 1UL << FeatureWriteZeroes;
        DeviceFeatures = features;

        var c = _config.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(c[0x00..], (ulong)(disk.Size / SectorSize)); // capacity
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x08..], SizeMax);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x0C..], SegMax);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x14..], SectorSize);                        // blk_size
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x22..], 1);                                  // num_queues
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x24..], MaxDiscardSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x28..], MaxDiscardSegments);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x2C..], 1);                                  // discard_sector_alignment
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x30..], MaxDiscardSectors);                  // max_write_zeroes_sectors
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x34..], MaxDiscardSegments);
        c[0x38] = 0;                                                                              // write_zeroes_may_unmap

        if (useWorkerThread)
        {
            _worker = new Thread(WorkerLoop) { IsBackground = true, Name = "virtio-blk" };
            _worker.Start();
        }
    }

    public uint ReadConfig(int offset, int size)
    {
        uint v = 0;
        for (int k = 0; k < size && offset + k < ConfigSize; k++) v |= (uint)_config[offset + k] << (8 * k);
        return v;
    }

    /// <summary>Every field is read-only without CONFIG_WCE (not offered).</summary>
    public void WriteConfig(int offset, int size, uint value) { }

    /// <summary>
    /// Limits the requests served (bytes read or written, and requests) in VM time; null removes the limit. Set it
    /// before the driver starts the device.
    /// </summary>
    public void SetRateLimit(RateLimitConfig? limit, Dirigent.Machine.Time.VirtualClock clock) =>
        SetRateLimit(limit, limit == null ? null : Misc.DeviceClock.From(clock));

    internal void SetRateLimit(RateLimitConfig? limit, Misc.DeviceClock? clock)
    {
        lock (_run)
        {
            _limiter?.Cancel();
            _limiter = limit == null ? null : new RateLimiter(limit, clock!, Resume);
        }
    }

    private void Resume()
    {
        // The timer may fire while the device is being disposed: then there is nothing left to resume.
        if (_stop) return;
        try { QueueNotify(0); }
        catch (ObjectDisposedException) { }
    }

    /// <summary>The limiter, if any (tests and statistics).</summary>
    internal RateLimiter? Limiter => _limiter;

    public void Activate(IVirtioTransport transport)
    {
        lock (_run) _transport = transport;
    }

    public void Reset()
    {
        // The worker stops after its current request (a guest can queue minutes of discards; a reset must not
        // wait for all of them), then no longer touches the queue.
        _stopBatch = true;
        lock (_run)
        {
            _transport = null;
            _stopBatch = false;
        }
    }

    /// <summary>A reset is waiting for the request in progress (tests: they hold a request until the reset has
    /// begun, instead of guessing with a sleep).</summary>
    internal bool ResetWaitingForRequest => _stopBatch;

    /// <summary>
    /// Waits for the request in progress to complete and be published (used ring and interrupt), then takes no new
    /// request until <see cref="Start"/>; afterwards the worker does not touch guest memory.
    /// </summary>
    public void Stop()
    {
        _paused = true;
        lock (_run) { }
    }

    /// <summary>Takes requests again, starting with those the driver made available while stopped.</summary>
    public void Start()
    {
        if (!_paused) return;
        _paused = false;
        // Without a worker, requests are served only inside the driver's notification, on its thread (a recording
        // logs what they write there): nothing was left waiting unless the driver made chains available meanwhile.
        if (_worker == null && _transport?.Queue(0).HasAvailable != true) return;
        QueueNotify(0);
    }

    /// <summary>
    /// Hands the device another open image of the same disk (live migration: the source closes its images so the
    /// target can open them, and reopens them if the migration fails). Only while the device is stopped.
    /// </summary>
    public void ReplaceDisk(IBlockDevice disk)
    {
        if (disk.Size != _disk.Size || disk.ReadOnly != _disk.ReadOnly)
            throw new ArgumentException("the replacement image differs in size or writability");
        _disk = disk;
    }

    /// <summary>The image the device serves.</summary>
    public IBlockDevice Disk => _disk;

    private ulong CapacitySectors => (ulong)(_disk.Size / SectorSize);

    public VirtioPciState SaveState(VirtioPciState state) => state with { Block = new VirtioBlockState(CapacitySectors, _disk.ReadOnly) };

    public void CheckState(VirtioPciState state)
    {
        if (state.Block is not { } b) throw new StateRestoreException("virtio-blk: saved state has no block device part");
        if (b.CapacitySectors != CapacitySectors || b.ReadOnly != _disk.ReadOnly)
            throw new StateRestoreException($"virtio-blk: saved for a {(b.ReadOnly ? "read-only " : "")}disk of {b.CapacitySectors} sectors, " +
                $"this one is a {(_disk.ReadOnly ? "read-only " : "")}disk of {CapacitySectors}");
    }

    public void QueueNotify(int queue)
    {
        if (_worker != null) _kick.Set();
        else lock (_run) ProcessQueue();
    }

    private void WorkerLoop()
    {
        while (true)
        {
            _kick.WaitOne();
            if (_stop) return;
            lock (_run) ProcessQueue();
        }
    }

    // Under _run.
    private void ProcessQueue()
    {
        if (_transport == null || _paused) return;
        var q = _transport.Queue(0);
        do
        {
            int batch = 0;
            while (!_stopBatch && !_paused && q.TryPop(_chain))
            {
                if (_limiter != null && !Admit(_chain))
                {
                    // Out of tokens: the request goes back to the ring, first in line; the limiter's timer resumes
                    // the queue when it may go. Until then kicks find it refused again.
                    q.Unpop((ushort)(q.LastAvailIndex - 1));
                    q.NotifyGuest();
                    return;
                }
                long written = Handle(q, _chain);
                if (written < 0) return; // malformed: the queue has stopped
                q.Push(_chain, (uint)written);
                RequestsCompleted++;
                // Bounded batches keep completion latency low while a long queue drains.
                if (++batch % 16 == 0) q.NotifyGuest();
            }
            q.NotifyGuest();
        } while (!_stopBatch && !_paused && q.PrepareToSleep());
    }

    /// <summary>
    /// Charges a request to the limiter: one op each, and the data bytes of reads and writes (Firecracker's rule;
    /// flushes, discards and GET_ID cost an op only). A malformed request costs an op and is failed by Handle.
    /// </summary>
    private bool Admit(VirtqueueChain chain)
    {
        Span<byte> type = stackalloc byte[4];
        long bytes = 0;
        if (chain.Read(0, type) == 4)
        {
            uint t = BinaryPrimitives.ReadUInt32LittleEndian(type);
            if (t == TypeIn) bytes = Math.Max(chain.WritableLength - 1, 0);
            else if (t == TypeOut) bytes = Math.Max(chain.ReadableLength - 16, 0);
        }
        return _limiter!.TryConsume(bytes, 1, out _);
    }

    /// <summary>Serves one request; returns the bytes written to the chain, or -1 if it was malformed.</summary>
    private long Handle(Virtqueue q, VirtqueueChain chain)
    {
        Span<byte> hdr = stackalloc byte[16];
        if (chain.Read(0, hdr) < hdr.Length || chain.WritableLength < 1)
        {
            q.Fail("virtio-blk request without a 16-byte header or a status byte");
            return -1;
        }
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(hdr);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(hdr[8..]);
        long dataIn = chain.WritableLength - 1, dataOut = chain.ReadableLength - hdr.Length;
        long written = 0;
        byte status;
        try
        {
            switch (type)
            {
                case TypeIn:
                    status = Read(chain, sector, dataIn);
                    if (status == StatusOk)
                    {
                        written = dataIn;
                        Interlocked.Add(ref _readBytes, dataIn);
                        Interlocked.Increment(ref _readOps);
                    }
                    break;
                case TypeOut:
                    status = WriteData(chain, sector, dataOut);
                    if (status == StatusOk)
                    {
                        Interlocked.Add(ref _writeBytes, dataOut);
                        Interlocked.Increment(ref _writeOps);
                    }
                    break;
                case TypeFlush:
                    _disk.Flush();
                    status = StatusOk;
                    break;
                case TypeGetId:
                    int n = (int)Math.Min(dataIn, SerialLength);
                    written = chain.Write(0, _serial.AsSpan(0, n));
                    status = StatusOk;
                    break;
                case TypeDiscard:
                case TypeWriteZeroes:
                    status = DiscardOrZero(chain, type, dataOut);
                    break;
                default:
                    status = StatusUnsupp;
                    break;
            }
        }
        catch (Exception e) when (e is IOException or BlockDeviceException or ArgumentOutOfRangeException or UnauthorizedAccessException)
        {
            status = StatusIoErr;
        }
        chain.Write(chain.WritableLength - 1, [status]);
        return written + 1;
    }

    private bool InRange(ulong sector, long bytes) =>
        bytes % SectorSize == 0 && sector <= (ulong)(_disk.Size / SectorSize) && bytes / SectorSize <= _disk.Size / SectorSize - (long)sector;

    private byte Read(VirtqueueChain chain, ulong sector, long length)
    {
        if (!InRange(sector, length)) return StatusIoErr;
        long pos = (long)sector * SectorSize;
        for (long done = 0; done < length;)
        {
            var buf = _bounce.AsSpan(0, (int)Math.Min(_bounce.Length, length - done));
            _disk.Read(pos + done, buf);
            chain.Write(done, buf);
            done += buf.Length;
        }
        return StatusOk;
    }

    private byte WriteData(VirtqueueChain chain, ulong sector, long length)
    {
        if (_disk.ReadOnly || !InRange(sector, length)) return StatusIoErr;
        long pos = (long)sector * SectorSize;
        for (long done = 0; done < length;)
        {
            var buf = _bounce.AsSpan(0, (int)Math.Min(_bounce.Length, length - done));
            chain.Read(16 + done, buf);
            _disk.Write(pos + done, buf);
            done += buf.Length;
        }
        return StatusOk;
    }

    private byte DiscardOrZero(VirtqueueChain chain, uint type, long length)
    {
        if (_disk.ReadOnly) return StatusIoErr;
        if (length == 0 || length % 16 != 0 || length / 16 > MaxDiscardSegments) return StatusUnsupp;
        Span<byte> seg = stackalloc byte[16];
        // Validate every segment before touching the disk, so a bad one leaves the others undone too.
        for (int pass = 0; pass < 2; pass++)
            for (long off = 0; off < length; off += 16)
            {
                chain.Read(16 + off, seg);
                ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(seg);
                uint count = BinaryPrimitives.ReadUInt32LittleEndian(seg[8..]);
                uint flags = BinaryPrimitives.ReadUInt32LittleEndian(seg[12..]);
                // §5.2.6.2: discard must not carry the unmap flag; write-zeroes may (we zero either way).
                uint allowed = type == TypeWriteZeroes ? 1u : 0u;
                if (pass == 0)
                {
                    if ((flags & ~allowed) != 0) return StatusUnsupp;
                    if (count > MaxDiscardSectors || !InRange(sector, (long)count * SectorSize)) return StatusIoErr;
                    continue;
                }
                if (type == TypeDiscard) _disk.Discard((long)sector * SectorSize, (long)count * SectorSize);
                else _disk.WriteZeroes((long)sector * SectorSize, (long)count * SectorSize);
            }
        return StatusOk;
    }

    public void Dispose()
    {
        _stop = _stopBatch = true;
        _limiter?.Cancel();
        _kick.Set();
        _worker?.Join();
        lock (_run) _transport = null;
        _kick.Dispose();
    }
}

/// <summary>A virtio-blk device's completed data transfers: bytes and requests, per direction.</summary>
public readonly record struct BlockCounters(long ReadBytes, long WriteBytes, long ReadOps, long WriteOps);
