using System.Buffers.Binary;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Pci;

/// <summary>
/// One PCI function with a type 0 header: 256 bytes of configuration space with per-byte write masks, 32-bit
/// memory BARs (sizing by writing all ones), a capability list, INTx through the bus's swizzle and optional MSI-X.
/// Subclasses describe themselves in the constructor and react to config writes through <see cref="OnConfigWritten"/>.
/// </summary>
public abstract class PciDevice : ILifecycle
{
    public const int ConfigSpaceSize = 256;

    private readonly byte[] _config = new byte[ConfigSpaceSize];
    private readonly byte[] _writeMask = new byte[ConfigSpaceSize];
    private readonly byte[] _initial = new byte[ConfigSpaceSize];
    private readonly uint[] _barSize = new uint[PciConfig.BarCount];
    private readonly uint[] _assignedBar = new uint[PciConfig.BarCount];
    private readonly IMmioDevice?[] _barHandler = new IMmioDevice?[PciConfig.BarCount];
    private int _nextCap = PciConfig.FirstCapability, _lastCap;
    private bool _intxAsserted;
    private readonly object _intxLock = new();

    /// <summary>Set by <see cref="PciBus.Attach"/>.</summary>
    public PciBus? Bus { get; internal set; }
    public int DevFn { get; internal set; } = -1;
    internal IIrqLine? IntxLine { get; set; }
    internal IInterruptSink? InterruptSink { get; set; }
    public PciMsix? Msix { get; private set; }

    protected PciDevice(ushort vendorId, ushort deviceId, uint classCode, byte revision,
        ushort subsystemVendorId, ushort subsystemId, byte interruptPin)
    {
        Set16(PciConfig.VendorId, vendorId);
        Set16(PciConfig.DeviceId, deviceId);
        _config[PciConfig.RevisionId] = revision;
        _config[PciConfig.ClassProgIf] = (byte)classCode;
        _config[PciConfig.ClassProgIf + 1] = (byte)(classCode >> 8);
        _config[PciConfig.ClassProgIf + 2] = (byte)(classCode >> 16);
        Set16(PciConfig.SubsystemVendorId, subsystemVendorId);
        Set16(PciConfig.SubsystemId, subsystemId);
        _config[PciConfig.InterruptPin] = interruptPin;
        // Command: I/O, memory, bus master, INTx disable; cache line size, latency timer and interrupt line are
        // plain storage for the OS.
        _writeMask[PciConfig.Command] = (byte)(PciConfig.CommandIo | PciConfig.CommandMemory | PciConfig.CommandBusMaster);
        _writeMask[PciConfig.Command + 1] = (byte)(PciConfig.CommandIntxDisable >> 8);
        _writeMask[PciConfig.CacheLineSize] = 0xFF;
        _writeMask[PciConfig.LatencyTimer] = 0xFF;
        _writeMask[PciConfig.InterruptLine] = 0xFF;
    }

    public ushort VendorId => Get16(PciConfig.VendorId);
    public ushort DeviceId => Get16(PciConfig.DeviceId);
    public ushort Command => Get16(PciConfig.Command);
    public bool MemorySpaceEnabled => (Command & PciConfig.CommandMemory) != 0;
    public bool BusMasterEnabled => (Command & PciConfig.CommandBusMaster) != 0;
    public byte InterruptPin => _config[PciConfig.InterruptPin];

    public uint BarSize(int index) => _barSize[index];
    internal IMmioDevice? BarHandler(int index) => _barHandler[index];

    /// <summary>The BAR's programmed base address (type bits stripped).</summary>
    public uint BarAddress(int index) => Get32(PciConfig.Bar0 + 4 * index) & ~0xFu;

    /// <summary>A 32-bit non-prefetchable memory BAR; <paramref name="size"/> is a power of two of at least 4 KiB.</summary>
    protected void AddMemoryBar(int index, uint size, IMmioDevice handler)
    {
        if (size < 0x1000 || (size & (size - 1)) != 0) throw new ArgumentOutOfRangeException(nameof(size));
        _barSize[index] = size;
        _barHandler[index] = handler;
        uint mask = ~(size - 1);
        for (int b = 0; b < 4; b++) _writeMask[PciConfig.Bar0 + 4 * index + b] = (byte)(mask >> (8 * b));
    }

    /// <summary>Appends a capability of <paramref name="length"/> bytes to the list and returns its offset.</summary>
    protected int AddCapability(byte id, int length)
    {
        int at = _nextCap;
        if (at + length > ConfigSpaceSize) throw new InvalidOperationException("PCI capabilities overflow config space");
        _config[at] = id;
        if (_lastCap == 0) _config[PciConfig.CapabilitiesPointer] = (byte)at;
        else _config[_lastCap + 1] = (byte)at;
        _lastCap = at;
        _nextCap = (at + length + 3) & ~3;
        Set16(PciConfig.Status, (ushort)(Get16(PciConfig.Status) | PciConfig.StatusCapabilitiesList));
        return at;
    }

    /// <summary>Adds the MSI-X capability with its table and PBA at offsets inside memory BAR <paramref name="bar"/>.</summary>
    protected PciMsix AddMsix(int vectors, int bar, uint tableOffset, uint pbaOffset)
    {
        int cap = AddCapability(PciConfig.CapIdMsix, 12);
        Msix = new PciMsix(this, cap, vectors, bar, tableOffset, pbaOffset);
        return Msix;
    }

    protected void SetWritable(int offset, int length, byte mask = 0xFF)
    {
        for (int k = 0; k < length; k++) _writeMask[offset + k] = mask;
    }

    internal void SetWritableInternal(int offset, byte mask) => _writeMask[offset] = mask;

    /// <summary>Called when the device is attached: what <see cref="ResetConfig"/> returns to.</summary>
    internal void CaptureInitialState() => Array.Copy(_config, _initial, ConfigSpaceSize);

    /// <summary>Raw config bytes for subclasses and capability helpers (no side effects).</summary>
    protected internal Span<byte> ConfigBytes => _config;

    protected internal ushort Get16(int off) => BinaryPrimitives.ReadUInt16LittleEndian(_config.AsSpan(off));
    protected internal uint Get32(int off) => BinaryPrimitives.ReadUInt32LittleEndian(_config.AsSpan(off));
    protected internal void Set16(int off, ushort v) => BinaryPrimitives.WriteUInt16LittleEndian(_config.AsSpan(off), v);
    protected internal void Set32(int off, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(_config.AsSpan(off), v);

    /// <summary>A configuration read of 1, 2 or 4 bytes that does not cross a dword.</summary>
    public virtual uint ReadConfig(int offset, int size)
    {
        if (offset < 0 || offset + size > ConfigSpaceSize) return size == 4 ? 0xFFFF_FFFFu : (1u << (8 * size)) - 1;
        uint v = 0;
        for (int k = 0; k < size; k++) v |= (uint)_config[offset + k] << (8 * k);
        return v;
    }

    public void WriteConfig(int offset, int size, uint value)
    {
        if (offset < 0 || offset + size > ConfigSpaceSize) return;
        ushort oldCommand = Command;
        bool barTouched = false;
        for (int k = 0; k < size; k++)
        {
            int o = offset + k;
            byte m = _writeMask[o];
            _config[o] = (byte)((_config[o] & ~m) | ((byte)(value >> (8 * k)) & m));
            if (o >= PciConfig.Bar0 && o < PciConfig.Bar0 + 4 * PciConfig.BarCount) barTouched = true;
        }
        ushort newCommand = Command;
        if (barTouched || ((oldCommand ^ newCommand) & PciConfig.CommandMemory) != 0) Bus?.UpdateMappings(this);
        if (((oldCommand ^ newCommand) & PciConfig.CommandIntxDisable) != 0) UpdateIntx();
        Msix?.ConfigWritten(offset, size);
        OnConfigWritten(offset, size, value);
    }

    /// <summary>After the generic handling of a config write (masks applied, BARs remapped).</summary>
    protected virtual void OnConfigWritten(int offset, int size, uint value) { }

    /// <summary>
    /// Drives the function's INTx: reflected in Status.Interrupt always, on the wire only while Command.IntxDisable
    /// is clear (PCI 3.0 §6.2.2).
    /// </summary>
    protected void SetIntx(bool asserted)
    {
        lock (_intxLock)
        {
            _intxAsserted = asserted;
            UpdateIntx();
        }
    }

    private void UpdateIntx()
    {
        lock (_intxLock)
        {
            ushort st = Get16(PciConfig.Status);
            Set16(PciConfig.Status, (ushort)(_intxAsserted ? st | PciConfig.StatusInterrupt : st & ~PciConfig.StatusInterrupt));
            IntxLine?.Set(_intxAsserted && (Command & PciConfig.CommandIntxDisable) == 0);
        }
    }

    /// <summary>Config space back to power-on (BARs to the addresses the VMM assigned), INTx deasserted.</summary>
    public virtual void ResetConfig()
    {
        Array.Copy(_initial, _config, ConfigSpaceSize);
        for (int i = 0; i < PciConfig.BarCount; i++)
            if (_barSize[i] != 0) Set32(PciConfig.Bar0 + 4 * i, _assignedBar[i]);
        Msix?.Reset();
        SetIntx(false);
        Bus?.UpdateMappings(this);
    }

    /// <summary>System reset (<see cref="ILifecycle"/>): the function's power-on state, see <see cref="ResetConfig"/>.</summary>
    public void Reset() => ResetConfig();

    /// <summary>Quiesces the function's own threads (none for a plain function).</summary>
    public virtual void Stop() { }

    /// <summary>Resumes what <see cref="Stop"/> quiesced.</summary>
    public virtual void Start() { }

    /// <summary>
    /// Registers the function's lifecycle and saved state under <paramref name="name"/> with its own record type (a
    /// plain function saves a <see cref="PciFunctionState"/>; subclasses with more state register their record).
    /// </summary>
    public virtual void RegisterState(StateRegistry registry, string name) => registry.Add(name, new FunctionUnit(this));

    /// <summary>A plain function as a saved-state unit: its config space and MSI-X.</summary>
    private sealed class FunctionUnit(PciDevice f) : IStateful<PciFunctionState>
    {
        public void Reset() => f.Reset();
        public void Stop() => f.Stop();
        public void Start() => f.Start();
        public PciFunctionState Save() => f.SaveFunction();
        public void Restore(PciFunctionState state)
        {
            f.CheckFunction(state);
            f.RestoreFunction(state);
        }
    }

    /// <summary>The configuration space, MSI-X table and PBA as they are now (VM paused).</summary>
    public PciFunctionState SaveFunction()
    {
        lock (_intxLock)
            return new PciFunctionState((byte[])_config.Clone(), Msix?.SaveTable(), Msix?.SavePba());
    }

    /// <summary>
    /// Throws <see cref="StateRestoreException"/> unless <paramref name="state"/> could be this function's: every
    /// read-only bit as this function has it (IDs, class, capability list, BAR type bits, so a BAR address that is
    /// not naturally aligned for its size is refused), and an MSI-X table and PBA of the right shape. Changes nothing.
    /// </summary>
    public void CheckFunction(PciFunctionState state)
    {
        string who = $"PCI function {VendorId:x4}:{DeviceId:x4}";
        if (state.Config == null || state.Config.Length != ConfigSpaceSize)
            throw new StateRestoreException($"{who}: saved configuration space is not {ConfigSpaceSize} bytes");
        for (int o = 0; o < ConfigSpaceSize; o++)
        {
            // Status.Interrupt follows the function's INTx, the one read-only bit that moves.
            byte dynamic = o == PciConfig.Status ? (byte)PciConfig.StatusInterrupt : (byte)0;
            byte fixedBits = (byte)~(_writeMask[o] | dynamic);
            if (((state.Config[o] ^ _config[o]) & fixedBits) == 0) continue;
            if (o >= PciConfig.Bar0 && o < PciConfig.Bar0 + 4 * PciConfig.BarCount && _barSize[(o - PciConfig.Bar0) / 4] != 0)
            {
                int bar = (o - PciConfig.Bar0) / 4;
                throw new StateRestoreException(
                    $"{who}: BAR {bar} = 0x{BinaryPrimitives.ReadUInt32LittleEndian(state.Config.AsSpan(PciConfig.Bar0 + 4 * bar)):x8} " +
                    $"is not a memory BAR aligned to its size 0x{_barSize[bar]:x}");
            }
            throw new StateRestoreException($"{who}: read-only configuration byte 0x{o:x2} is 0x{state.Config[o]:x2}, this function has 0x{_config[o]:x2}");
        }
        if (Msix == null)
        {
            if (state.MsixTable != null || state.MsixPba != null)
                throw new StateRestoreException($"{who}: saved state has an MSI-X table, this function has no MSI-X");
        }
        else
        {
            string? error = Msix.Check(state.MsixTable, state.MsixPba, state.Config);
            if (error != null) throw new StateRestoreException($"{who}: {error}");
        }
    }

    /// <summary>
    /// Applies a state that passed <see cref="CheckFunction"/>: configuration space, MSI-X, INTx as Status.Interrupt
    /// says, and BAR decoding on the MMIO bus as the command register and BARs say. Raises no MSI.
    /// </summary>
    public void RestoreFunction(PciFunctionState state)
    {
        lock (_intxLock)
        {
            state.Config.CopyTo(_config, 0);
            _intxAsserted = (Get16(PciConfig.Status) & PciConfig.StatusInterrupt) != 0;
        }
        Msix?.Restore(state.MsixTable!, state.MsixPba!);
        UpdateIntx();
        Bus?.UpdateMappings(this);
    }

    /// <summary>Writes the BAR as firmware would (no mapping change until memory space is enabled).</summary>
    internal void AssignBar(int index, uint address)
    {
        _assignedBar[index] = address & ~(_barSize[index] - 1);
        Set32(PciConfig.Bar0 + 4 * index, _assignedBar[index]);
    }

    internal void SetInterruptLine(byte line)
    {
        _config[PciConfig.InterruptLine] = line;
        _initial[PciConfig.InterruptLine] = line;
    }
}
