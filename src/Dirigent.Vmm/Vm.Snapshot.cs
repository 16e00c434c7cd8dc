using System.Text.Json;
using Dirigent.Accel.Emu;
using Dirigent.Machine.State;
using Dirigent.Vmm.Snapshots;

namespace Dirigent.Vmm;

public sealed partial class Vm
{
    /// <summary>
    /// Writes a snapshot of the VM into directory <paramref name="dir"/> (created if missing; it must not hold a
    /// snapshot already): pauses a running VM, flushes the disks, writes the memory file and then state.json (last, so
    /// an interrupted save leaves no snapshot that looks complete), and resumes the VM if it was running. Returns when
    /// the snapshot is complete on disk. Disks are referenced, not copied (as with Firecracker): a restore refuses a
    /// disk whose size or contents changed since.
    /// </summary>
    public void SaveSnapshot(string dir)
    {
        lock (_cmd)
        {
            Require("snapshot", VmState.Running, VmState.ShuttingDown, VmState.Paused, VmState.Created);
            bool wasRunning = State is VmState.Running or VmState.ShuttingDown;
            if (wasRunning && !PauseCore()) throw new VmStateException($"the VM ended while pausing for the snapshot: {ExitReason}");
            try { WriteSnapshot(dir); }
            finally
            {
                if (wasRunning) ResumeCore();
            }
        }
    }

    private void WriteSnapshot(string dir)
    {
        try
        {
            Directory.CreateDirectory(dir);
            if (File.Exists(Path.Combine(dir, SnapshotFiles.StateFile)) || File.Exists(Path.Combine(dir, SnapshotFiles.MemoryFile)))
                throw new VmException($"snapshot directory {dir} already holds a snapshot", badInput: true);
            Board.FlushDisks();
            var m = CaptureManifest();
            foreach (var d in Spec.Disks)
            {
                var fi = new FileInfo(d.Path);
                m.Disks.Add(new SnapshotDisk { Path = fi.FullName, Size = fi.Length, Sha256 = SnapshotFiles.HashFile(d.Path) });
            }
            SnapshotFiles.WriteMemory(Machine.Memory, Path.Combine(dir, SnapshotFiles.MemoryFile));
            string tmp = Path.Combine(dir, SnapshotFiles.StateFile + ".tmp");
            File.WriteAllText(tmp, JsonSerializer.Serialize(m, SnapshotFiles.Json));
            using (var f = new FileStream(tmp, FileMode.Open, FileAccess.ReadWrite)) f.Flush(flushToDisk: true);
            File.Move(tmp, Path.Combine(dir, SnapshotFiles.StateFile));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new VmException($"cannot write snapshot to {dir}: {e.Message}", badInput: true);
        }
    }

    /// <summary>The sandbox directory this VM runs in (README "Sandbox"), set by <see cref="Sandbox.VmSandbox"/>;
    /// null for any other VM.</summary>
    public string? SandboxDirectory { get; internal set; }

    /// <summary>Writes an event line to the VM's network logs (the sandbox's sinkhole), if it has any.</summary>
    internal void NoteInNetworkLogs(string what) => _nics.NoteInLogs(what);

    /// <summary>
    /// Puts this VM back, in place, to the snapshot in <paramref name="dir"/> (one it saved itself, or one of the
    /// same shape): memory, vCPUs and devices as saved, and it goes on running if it was. The disks are closed while
    /// <paramref name="whileDisksClosed"/> runs (a sandbox copies its start overlays back then) and must then be as the
    /// snapshot recorded them. Anything wrong before the memory is touched is a <see cref="VmException"/> and the VM
    /// goes on as it was; a failure after that crashes it (its state would be neither the old nor the saved one).
    /// </summary>
    public void RevertInPlace(string dir, Action? whileDisksClosed = null)
    {
        lock (_cmd)
        {
            Require("revert", VmState.Running, VmState.ShuttingDown, VmState.Paused);
            var m = ReadManifest(dir);
            string mem = Path.Combine(dir, SnapshotFiles.MemoryFile);
            if (m.MemoryBytes != (long)Machine.Memory.RamSize || m.Cpus.Count != Vcpus.Length || m.Disks.Count != Spec.Disks.Count
                || m.Spec.Nics.Count != Spec.Nics.Count)
                throw new VmException($"snapshot {dir} is of another VM ({m.MemoryBytes >> 20} MiB, {m.Cpus.Count} vCPUs, {m.Disks.Count} disks)", badInput: true);
            if (!File.Exists(mem) || new FileInfo(mem).Length != m.MemoryBytes)
                throw new VmException($"snapshot {dir}: the memory file is missing or truncated", badInput: true);
            var before = State;
            bool wasRunning = State is VmState.Running or VmState.ShuttingDown;
            if (wasRunning && !PauseCore()) throw new VmStateException($"the VM ended while pausing for the revert: {ExitReason}");
            // Set while a failure leaves the VM in no state it could run on (disks closed, memory half replaced).
            bool fatal = false;
            try
            {
                Board.FlushDisks();
                if (whileDisksClosed != null)
                {
                    Board.CloseDisks();
                    try
                    {
                        whileDisksClosed();
                        CheckDisks(dir, m);
                    }
                    finally
                    {
                        // The disks as they now are, whether the action and the check went through or not.
                        fatal = true;
                        Board.ReopenDisks(Spec.Disks.Select(DiskFactory.Open).ToList());
                        fatal = false;
                    }
                }
                else CheckDisks(dir, m);
                fatal = true;
                SnapshotFiles.ReplaceMemory(Machine.Memory, mem, mapPrivate: Accel is EmuAccelerator
                    && Environment.GetEnvironmentVariable("DIRIGENT_RESTORE_COPY") != "1");
                ApplyManifest(m);
                // KVM: the states PauseCore kept would be set back at resume, over the restored ones.
                _pausedStates = null;
            }
            catch (Exception e) when (e is VmException or IOException or UnauthorizedAccessException or Dirigent.Storage.BlockDeviceException)
            {
                string why = e is VmException ? e.Message : $"revert to {dir}: {e.Message}";
                if (fatal)
                {
                    Finish(VmState.Crashed, new VmExitReason(VmExitKind.VmmError, $"the revert failed half-way: {why}"));
                    throw new VmException(why, badInput: false);
                }
                State = before;
                if (wasRunning) ResumeCore();
                throw new VmException(why, badInput: e is VmException { BadInput: true });
            }
            if (wasRunning) { ResumeCore(); State = before == VmState.ShuttingDown ? VmState.Running : before; }
        }
    }

    /// <summary>Everything but RAM and disks, from a paused VM.</summary>
    internal SnapshotManifest CaptureManifest() => new()
    {
        CreatedUtc = DateTime.UtcNow,
        Accel = Accel.Name,
        Spec = Spec,
        MemoryBytes = (long)Machine.Memory.RamSize,
        Reboots = Reboots,
        Components = Board.Registry.SaveAll(),
        Cpus = Vcpus.Select(v => v.GetState()).ToList(),
    };

    /// <summary>
    /// Builds a VM from a snapshot directory, paused where it was saved (<see cref="Start"/> or <see cref="Resume"/>
    /// continues it), on <paramref name="accel"/> or the snapshot's accelerator when null. A missing, truncated,
    /// wrong-version or wrong-size snapshot, or a disk that changed since, is a <see cref="VmException"/> (bad input)
    /// and nothing is changed.
    /// </summary>
    public static Vm Restore(string dir, AccelKind? accel, TextWriter log)
    {
        var m = ReadManifest(dir);
        string mem = Path.Combine(dir, SnapshotFiles.MemoryFile);
        if (!File.Exists(mem)) throw new VmException($"snapshot {dir}: no memory file", badInput: true);
        long memLen = new FileInfo(mem).Length;
        if (memLen != m.MemoryBytes)
            throw new VmException($"snapshot {dir}: memory file is {memLen} bytes, state.json says {m.MemoryBytes} (truncated?)", badInput: true);
        if ((ulong)m.MemoryBytes != m.Spec.MemoryBytes)
            throw new VmException($"snapshot {dir}: memory size {m.MemoryBytes} does not match the VM spec's {m.Spec.MemoryBytes}", badInput: true);
        CheckDisks(dir, m);
        var spec = m.Spec;
        if (accel != null) spec.Accel = accel.Value;
        else spec.Accel = m.Accel == "kvm" ? AccelKind.Kvm : AccelKind.Emu;
        var vm = Build(spec, log, loadGuest: false);
        try
        {
            // The software CPU reads RAM through host pointers only, so the file can simply be mapped copy-on-write
            // (O(1) restore, as Firecracker). Under KVM the pages are copied: its memory slots were registered over the
            // anonymous mapping, and replacing it under them is left to when it can be tested on a real KVM.
            SnapshotFiles.ReadMemory(vm.Machine.Memory, mem, mapPrivate: vm.Accel is EmuAccelerator
                && Environment.GetEnvironmentVariable("DIRIGENT_RESTORE_COPY") != "1");
            vm.ApplyManifest(m);
            return vm;
        }
        catch
        {
            vm.Dispose();
            throw;
        }
    }

    /// <summary>Component and CPU state onto a freshly built, never-run VM; it ends up Paused.</summary>
    internal void ApplyManifest(SnapshotManifest m)
    {
        if (m.Cpus.Count != Vcpus.Length)
            throw new VmException($"snapshot has {m.Cpus.Count} vCPU states for {Vcpus.Length} vCPUs", badInput: true);
        for (int k = 0; k < Vcpus.Length; k++)
        {
            var s = m.Cpus[k];
            if (s.Gpr is not { Length: 16 } || s.Segments is not { Length: 6 } || s.Dr is not { Length: 8 } || s.Fxsave is not { Length: 512 })
                throw new VmException($"snapshot: vCPU {k} state is malformed", badInput: true);
            s.Msrs ??= new();
            s.PendingInterrupts ??= [];
        }
        // Order: the clock and devices, then the vCPUs (their TSC is computed against the restored clock; under KVM
        // CR8 and the TSC must be in before the local APICs), then local APICs, IOAPIC, PICs, PIT (the board's order).
        bool cpusDone = false;
        void RestoreCpus()
        {
            for (int k = 0; k < Vcpus.Length; k++)
            {
                try { Vcpus[k].SetState(m.Cpus[k]); }
                catch (StateRestoreException e) { throw new VmException($"snapshot: vCPU {k}: {e.Message}", badInput: true); }
            }
            cpusDone = true;
        }
        try
        {
            Board.Registry.RestoreAll(m.Components, name =>
            {
                if (!cpusDone && name.StartsWith("lapic/", StringComparison.Ordinal)) RestoreCpus();
            });
            if (!cpusDone) RestoreCpus();
        }
        catch (StateRestoreException e) { throw new VmException($"snapshot: {e.Message}", badInput: true); }
        for (int k = 0; k < Vcpus.Length; k++)
        {
            // The emulated local APIC re-armed its TSC deadline against an unshifted TSC; shift it by the vCPU's offset.
            if (Vcpus[k] is Dirigent.Accel.Emu.Core.Cpu cpu && cpu.TscOffset != 0 && Board.EmulatedInterrupts is { } r)
                r.LocalApics[k].WriteTscDeadline(r.LocalApics[k].ReadTscDeadline(), cpu.TscOffset);
        }
        Reboots = m.Reboots;
        lock (_cmd) State = VmState.Paused;
    }

    /// <summary>The VM spec a snapshot was saved with (what a jail must show the VMM that restores it); the same
    /// checks and <see cref="VmException"/>s as <see cref="Restore"/>'s first step.</summary>
    public static VmSpec ReadSnapshotSpec(string dir) => ReadManifest(dir).Spec;

    internal static SnapshotManifest ReadManifest(string dir)
    {
        string path = Path.Combine(dir, SnapshotFiles.StateFile);
        if (!Directory.Exists(dir)) throw new VmException($"snapshot {dir}: no such directory", badInput: true);
        if (!File.Exists(path)) throw new VmException($"snapshot {dir}: no {SnapshotFiles.StateFile} (not a snapshot, or its save did not complete)", badInput: true);
        SnapshotManifest? m;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object
                || !root.TryGetProperty("format", out var f) || f.ValueKind != JsonValueKind.String || f.GetString() != SnapshotManifest.FormatName)
                throw new VmException($"snapshot {dir}: {SnapshotFiles.StateFile} is not a Dirigent snapshot", badInput: true);
            if (!root.TryGetProperty("version", out var v) || !v.TryGetInt32(out int ver) || ver != SnapshotManifest.CurrentVersion)
                throw new VmException($"snapshot {dir}: format version {(root.TryGetProperty("version", out var v2) ? v2.ToString() : "missing")}, this build reads version {SnapshotManifest.CurrentVersion}", badInput: true);
            m = root.Deserialize<SnapshotManifest>(SnapshotFiles.Json);
        }
        catch (JsonException e) { throw new VmException($"snapshot {dir}: {SnapshotFiles.StateFile} is corrupt: {e.Message}", badInput: true); }
        catch (IOException e) { throw new VmException($"snapshot {dir}: {e.Message}", badInput: true); }
        if (m == null || m.Spec == null || m.Components == null || m.Cpus == null || m.Disks == null)
            throw new VmException($"snapshot {dir}: {SnapshotFiles.StateFile} is incomplete", badInput: true);
        if (m.Spec.Cpus < 1 || m.Spec.Cpus > 64 || m.Spec.MemoryBytes == 0)
            throw new VmException($"snapshot {dir}: the VM spec is invalid", badInput: true);
        return m;
    }

    private static void CheckDisks(string dir, SnapshotManifest m)
    {
        if (m.Disks.Count != m.Spec.Disks.Count)
            throw new VmException($"snapshot {dir}: {m.Disks.Count} disk records for {m.Spec.Disks.Count} disks", badInput: true);
        foreach (var d in m.Disks)
        {
            var fi = new FileInfo(d.Path);
            if (!fi.Exists) throw new VmException($"snapshot {dir}: disk {d.Path} is missing", badInput: true);
            if (fi.Length != d.Size)
                throw new VmException($"snapshot {dir}: disk {d.Path} changed since the snapshot (size {fi.Length}, was {d.Size})", badInput: true);
            if (SnapshotFiles.HashFile(d.Path) != d.Sha256)
                throw new VmException($"snapshot {dir}: disk {d.Path} changed since the snapshot (contents differ)", badInput: true);
        }
    }
}
