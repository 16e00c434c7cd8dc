using System.Security.Cryptography;
using System.Text.Json;
using Dirigent.Devices;
using Dirigent.Machine.Introspection.RecordReplay;
using Dirigent.Storage;

namespace Dirigent.Vmm.Introspection;

/// <summary>DIR/manifest.json of a recording: what ran, how it ended, and what a replay must reproduce.</summary>
public sealed class RecordingManifest
{
    public const string FormatName = "dirigent-recording";
    /// <summary>2: virtio disks and the entropy device, whose writes into guest RAM are in the log. A version-1
    /// recording (no virtio devices) replays as before.</summary>
    public const int CurrentVersion = 2;
    public const string FileName = "manifest.json";
    public const string LogFileName = "events.bin";

    public string Format { get; set; } = FormatName;
    public int Version { get; set; } = CurrentVersion;
    public string Kernel { get; set; } = "";
    public string KernelSha256 { get; set; } = "";
    public List<RecordedFile> Initrds { get; set; } = new();
    public string Append { get; set; } = "";
    public ulong MemoryBytes { get; set; }
    /// <summary>The virtio disks, in --disk order. Not read in a replay (what the guest read from them is in the
    /// log); the replay builds the same devices with stand-ins of the recorded size.</summary>
    public List<RecordedDisk> Disks { get; set; } = new();
    /// <summary>Whether the VM had the virtio entropy device (its bytes are in the log).</summary>
    public bool Rng { get; set; }
    /// <summary>The virtio-net cards, in --net order (what they received is in the log; a replay opens no network).</summary>
    public List<RecordedNic> Nics { get; set; } = new();
    public ulong CheckpointInterval { get; set; }
    /// <summary>VM time per instruction (VM time is instruction time in a recording and its replays).</summary>
    public long NsPerInstruction { get; set; }
    /// <summary>Retired instructions from the first to the end.</summary>
    public ulong Instructions { get; set; }
    /// <summary>stopped, power-off, debug-exit, triple-fault, halted-forever or reset.</summary>
    public string End { get; set; } = "";
    public int EndCode { get; set; }
    public string MemorySha256 { get; set; } = "";
    public string ConsoleSha256 { get; set; } = "";
    public long ConsoleBytes { get; set; }
    public long Events { get; set; }
    public long LogBytes { get; set; }
    /// <summary>Device writes into guest RAM (DMA) in the log, and their bytes.</summary>
    public long DmaWrites { get; set; }
    public long DmaBytes { get; set; }
    /// <summary>VM time the recording covered (instruction time, idle skips included).</summary>
    public long VmTimeNs { get; set; }

    public sealed class RecordedFile
    {
        public string Path { get; set; } = "";
        public string Sha256 { get; set; } = "";
    }

    public sealed class RecordedNic
    {
        /// <summary>user or tap=NAME, for people; the replay does not use it.</summary>
        public string Backend { get; set; } = "";
        /// <summary>The card's MAC address, as 12 hex digits.</summary>
        public string Mac { get; set; } = "";
    }

    public sealed class RecordedDisk
    {
        public string Path { get; set; } = "";
        /// <summary>raw or qcow2 (as opened).</summary>
        public string Format { get; set; } = "";
        /// <summary>Virtual size in bytes (what the guest saw).</summary>
        public long Size { get; set; }
        public bool ReadOnly { get; set; }
    }

    internal static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
    };
}

/// <summary>A recording or replay could not start (one line for the user).</summary>
public sealed class RecordingException(string message) : Exception(message);

/// <summary>
/// `dirigent run --record DIR` and `--replay DIR` around one <see cref="Vm"/>: checks that the VM can be recorded
/// (one vCPU on the software CPU, a kernel booted directly), opens the event log, and at the end writes or checks
/// the manifest (instruction count, SHA-256 of guest RAM and of the console output). Virtio disks, network cards
/// and the entropy device are recorded through their writes into guest RAM (RecordReplaySession; received frames
/// reach the card between instructions, Net/RecordedNetBackend); a replay gets stand-in disks and backends.
/// </summary>
public sealed class RunRecorder : IDisposable
{
    private readonly IncrementalHash _console = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    private long _consoleBytes;
    private IDisposable? _consoleSub;
    private Vm? _vm;

    public string Dir { get; }
    public bool Replaying => Session.Replaying;
    public RecordReplaySession Session { get; }
    /// <summary>Replay: the recording's manifest.</summary>
    public RecordingManifest? Recorded { get; }

    private RunRecorder(string dir, RecordReplaySession session, RecordingManifest? recorded)
    {
        Dir = dir;
        Session = session;
        Recorded = recorded;
    }

    /// <summary>Null when <paramref name="spec"/> can be recorded, else why not (one line).</summary>
    public static string? Unsupported(VmSpec spec)
    {
        if (spec.Cpus != 1) return $"--record needs one vCPU (--cpus {spec.Cpus}): the interleaving of vCPUs is not recorded";
        if (spec.Accel == AccelKind.Kvm) return "--record needs the software CPU (--accel emu): KVM does not count instructions exactly";
        if (spec.Firmware != FirmwareKind.None || spec.Kernel == null) return "--record needs --kernel (firmware boot is not supported)";
        return null;
    }

    /// <summary>Starts a recording into <paramref name="dir"/> (new or empty); adjusts the spec (software CPU, no reboot).</summary>
    public static RunRecorder Record(string dir, VmSpec spec)
    {
        if (Unsupported(spec) is { } why) throw new RecordingException(why);
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
            throw new RecordingException($"--record {dir}: the directory is not empty");
        spec.Accel = AccelKind.Emu;
        // A reboot reloads the guest: the recording ends there instead.
        spec.NoReboot = true;
        try
        {
            Directory.CreateDirectory(dir);
            var log = new FileStream(Path.Combine(dir, RecordingManifest.LogFileName), FileMode.CreateNew, FileAccess.Write);
            return new RunRecorder(dir, RecordReplaySession.Record(log), null);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new RecordingException($"--record {dir}: {e.Message}");
        }
    }

    /// <summary>Opens the recording in <paramref name="dir"/> for replay; <paramref name="spec"/> is the VM it ran.</summary>
    public static RunRecorder Replay(string dir, out VmSpec spec)
    {
        RecordingManifest m;
        string path = Path.Combine(dir, RecordingManifest.FileName);
        try { m = JsonSerializer.Deserialize<RecordingManifest>(File.ReadAllText(path), RecordingManifest.Json) ?? throw new JsonException("empty"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new RecordingException($"--replay {dir}: {e.Message}"); }
        catch (JsonException e) { throw new RecordingException($"--replay {dir}: {RecordingManifest.FileName} is not a recording manifest ({e.Message})"); }
        if (m.Format != RecordingManifest.FormatName || m.Version is < 1 or > RecordingManifest.CurrentVersion)
            throw new RecordingException($"--replay {dir}: format {m.Format} version {m.Version}; this dirigent reads {RecordingManifest.FormatName} versions 1 to {RecordingManifest.CurrentVersion}");
        m.Disks ??= new();
        if (m.Disks.FirstOrDefault(d => d.Size <= 0 || d.Size % 512 != 0) is { } bad)
            throw new RecordingException($"--replay {dir}: {RecordingManifest.FileName}: disk {bad.Path} has size {bad.Size}");
        m.Nics ??= new();
        var macs = new List<byte[]>();
        foreach (var n in m.Nics)
        {
            byte[] mac;
            try { mac = Convert.FromHexString(n.Mac ?? ""); }
            catch (FormatException) { mac = []; }
            if (mac.Length != 6) throw new RecordingException($"--replay {dir}: {RecordingManifest.FileName}: network card MAC '{n.Mac}' is not 12 hex digits");
            macs.Add(mac);
        }
        CheckInput(m.Kernel, m.KernelSha256);
        foreach (var f in m.Initrds) CheckInput(f.Path, f.Sha256);
        spec = new VmSpec
        {
            Kernel = m.Kernel, Initrds = m.Initrds.Select(f => f.Path).ToList(), Append = m.Append,
            MemoryBytes = m.MemoryBytes, Accel = AccelKind.Emu, NoReboot = true, Rng = m.Rng,
            Disks = m.Disks.Select(d => new DiskConfig(d.Path, d.Format == "qcow2" ? DiskFormat.Qcow2 : DiskFormat.Raw, d.ReadOnly)).ToList(),
            // Cut off in the replay (stand-in backends): only the cards' number and MAC addresses matter.
            Nics = macs.Select(mac => new NicConfig { Mac = mac }).ToList(),
        };
        try
        {
            var log = new FileStream(Path.Combine(dir, RecordingManifest.LogFileName), FileMode.Open, FileAccess.Read);
            return new RunRecorder(dir, RecordReplaySession.Replay(log, m.CheckpointInterval), m);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new RecordingException($"--replay {dir}: {e.Message}"); }
        catch (EventLogFormatException e) { throw new RecordingException($"--replay {dir}: {RecordingManifest.LogFileName}: {e.Message}"); }
    }

    /// <summary>
    /// Replay: the disks the VM gets instead of the recorded images (which may be gone or changed): the same size and
    /// writability, so the devices look the same, but nothing to read; the replayed devices never serve a request.
    /// </summary>
    public IReadOnlyList<IBlockDevice> ReplayDisks() =>
        (Recorded?.Disks ?? []).Select(d => (IBlockDevice)new ReplayStandInDisk(d.Size, d.ReadOnly)).ToList();

    private sealed class ReplayStandInDisk(long size, bool readOnly) : IBlockDevice
    {
        public long Size => size;
        public bool ReadOnly => readOnly;
        private static BlockDeviceException Cut() => new("a replayed disk is not read: its data comes from the recording");
        public void Read(long offset, Span<byte> buffer) => throw Cut();
        public void Write(long offset, ReadOnlySpan<byte> data) => throw Cut();
        public void Flush() { }
        public void Discard(long offset, long length) => throw Cut();
        public void WriteZeroes(long offset, long length) => throw Cut();
        public void Dispose() { }
    }

    private static void CheckInput(string path, string sha)
    {
        string actual;
        try { actual = Sha256File(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new RecordingException($"--replay: input {path}: {e.Message}"); }
        if (!string.Equals(actual, sha, StringComparison.OrdinalIgnoreCase))
            throw new RecordingException($"--replay: {path} has changed since the recording (SHA-256 {actual}, recorded {sha})");
    }

    private static string Sha256File(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    /// <summary>Wires the session to the built VM (console hash; replay: COM1 mirror, the end of a stopped recording).</summary>
    public void Attach(Vm vm)
    {
        _vm = vm;
        _consoleSub = vm.Console.Subscribe(b => { lock (_console) { _console.AppendData([b]); _consoleBytes++; } });
        if (Session.Replaying)
        {
            Session.ConsolePort = PcPlatform.Com1Port;
            Session.ConsoleOutput = vm.Console.GuestWrote;
            // A recording stopped from outside (Ctrl-A x, a signal) ends the replay the same way, from outside.
            Session.EndReached += kind => { if (kind == RecordedEnd.Stopped) Task.Run(() => { try { vm.Stop(); } catch (ObjectDisposedException) { } }); };
        }
    }

    /// <summary>
    /// After the VM ended (its vCPU stopped for good): recording: the end event and the manifest; replay: the
    /// comparison with the manifest. Returns one line for the log; <paramref name="ok"/> says whether a replay matched.
    /// </summary>
    public string Finish(out bool ok)
    {
        var vm = _vm ?? throw new InvalidOperationException("not attached");
        _consoleSub?.Dispose();
        ulong icount = vm.VcpuList[0].InstructionsRetired;
        string memSha = MemorySha256(vm);
        string conSha;
        lock (_console) conSha = Convert.ToHexStringLower(_console.GetCurrentHash());
        ok = true;
        if (Session.Replaying)
        {
            var m = Recorded!;
            if (Session.Divergence is { } d) { ok = false; return d.Message; }
            var diffs = new List<string>();
            if (icount != m.Instructions) diffs.Add($"{icount} instructions, recorded {m.Instructions}");
            if (memSha != m.MemorySha256) diffs.Add($"memory SHA-256 {memSha}, recorded {m.MemorySha256}");
            if (conSha != m.ConsoleSha256) diffs.Add($"console output SHA-256 {conSha} ({_consoleBytes} bytes), recorded {m.ConsoleSha256} ({m.ConsoleBytes} bytes)");
            if (diffs.Count > 0) { ok = false; return "replay differs from the recording: " + string.Join("; ", diffs); }
            return $"replay matches the recording: {icount} instructions, memory SHA-256 {memSha[..16]}…, {_consoleBytes} console bytes";
        }
        var (end, code) = EndOf(vm.ExitReason);
        Session.LogEnd(icount, end, code);
        var blocks = vm.Board.Blocks;
        var manifest = new RecordingManifest
        {
            Kernel = Path.GetFullPath(vm.Spec.Kernel!), KernelSha256 = Sha256File(vm.Spec.Kernel!),
            Initrds = vm.Spec.Initrds.Select(p => new RecordingManifest.RecordedFile { Path = Path.GetFullPath(p), Sha256 = Sha256File(p) }).ToList(),
            Append = vm.Spec.Append, MemoryBytes = vm.Spec.MemoryBytes, CheckpointInterval = Session.CheckpointInterval,
            Disks = vm.Spec.Disks.Select((d, k) => new RecordingManifest.RecordedDisk
            {
                Path = Path.GetFullPath(d.Path), Format = blocks[k].Disk is Qcow2Disk ? "qcow2" : "raw",
                Size = blocks[k].Disk.Size, ReadOnly = blocks[k].Disk.ReadOnly,
            }).ToList(),
            Nics = vm.Spec.Nics.Select(n => new RecordingManifest.RecordedNic
            {
                Backend = n.User != null ? "user" : $"tap={n.Tap}", Mac = Convert.ToHexStringLower(n.Mac),
            }).ToList(),
            Rng = vm.Spec.Rng, DmaWrites = Session.DmaWrites, DmaBytes = Session.DmaBytes,
            NsPerInstruction = RecordReplaySession.NsPerInstruction,
            Instructions = icount, End = EndName(end), EndCode = code, MemorySha256 = memSha, ConsoleSha256 = conSha,
            ConsoleBytes = _consoleBytes, Events = Session.EventsWritten, LogBytes = Session.LogBytes, VmTimeNs = vm.Machine.Clock.NowNs,
        };
        string tmp = Path.Combine(Dir, RecordingManifest.FileName + ".tmp");
        File.WriteAllText(tmp, JsonSerializer.Serialize(manifest, RecordingManifest.Json));
        File.Move(tmp, Path.Combine(Dir, RecordingManifest.FileName), overwrite: true);
        if (Session.RecordError is { } broken)
        {
            ok = false;
            return $"the recording in {Dir} cannot be replayed: {broken}";
        }
        return $"recorded {icount} instructions, {manifest.Events} events ({manifest.LogBytes} bytes) in {Dir}";
    }

    private static (RecordedEnd, int) EndOf(VmExitReason? r) => r?.Kind switch
    {
        VmExitKind.PowerOff => (RecordedEnd.PowerOff, 0),
        VmExitKind.DebugExit => (RecordedEnd.DebugExit, (r.DebugExitValue << 1) | 1),
        VmExitKind.TripleFault => (RecordedEnd.TripleFault, 0),
        VmExitKind.HaltedForever => (RecordedEnd.HaltedForever, 0),
        VmExitKind.Reset => (RecordedEnd.Reset, 0),
        _ => (RecordedEnd.Stopped, 0),
    };

    private static string EndName(RecordedEnd e) => e switch
    {
        RecordedEnd.PowerOff => "power-off",
        RecordedEnd.DebugExit => "debug-exit",
        RecordedEnd.TripleFault => "triple-fault",
        RecordedEnd.HaltedForever => "halted-forever",
        RecordedEnd.Reset => "reset",
        _ => "stopped",
    };

    /// <summary>SHA-256 over guest RAM, region by region (ROMs excluded), as hex.</summary>
    public static unsafe string MemorySha256(Vm vm)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var r in vm.Machine.Memory.Regions)
        {
            for (ulong off = 0; off < r.Size; off += 1 << 30)
            {
                int n = (int)Math.Min(1UL << 30, r.Size - off);
                h.AppendData(new ReadOnlySpan<byte>(r.Host + off, n));
            }
        }
        return Convert.ToHexStringLower(h.GetCurrentHash());
    }

    public void Dispose()
    {
        _consoleSub?.Dispose();
        Session.Dispose();
        _console.Dispose();
    }
}
