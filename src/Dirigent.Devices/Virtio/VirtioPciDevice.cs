using Dirigent.Devices.Pci;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Memory;
using Dirigent.Machine.State;
using static Dirigent.Devices.Virtio.VirtioConstants;

namespace Dirigent.Devices.Virtio;

/// <summary>
/// Virtio 1.x modern PCI transport (virtio 1.2 §4.1) for one <see cref="IVirtioDevice"/>: vendor 0x1AF4, device
/// 0x1040 + type, revision 1, and one 32 KiB memory BAR 0 holding the common configuration, ISR, device
/// configuration and notification regions (each found through a vendor-specific capability) plus the MSI-X table
/// and PBA. Also the VIRTIO_PCI_CAP_PCI_CFG window for drivers that cannot map the BAR.
/// </summary>
public sealed class VirtioPciDevice : PciDevice, IVirtioTransport, IStateful<VirtioPciState>
{
    // Capability cfg_type values (§4.1.4)
    public const byte CapCommonCfg = 1, CapNotifyCfg = 2, CapIsrCfg = 3, CapDeviceCfg = 4, CapPciCfg = 5;

    // BAR 0 layout: one 4 KiB page per region so each can be mapped on its own.
    public const uint Bar0Size = 0x8000;
    public const uint CommonOffset = 0x0000, CommonLength = 0x40;
    public const uint IsrOffset = 0x1000, IsrLength = 4;
    public const uint DeviceCfgOffset = 0x2000, DeviceCfgMax = 0x1000;
    public const uint NotifyOffset = 0x3000, NotifyOffMultiplier = 4;
    public const uint MsixTableOffset = 0x4000, MsixPbaOffset = 0x5000;

    private const ulong TransportFeatures = Version1 | RingIndirectDesc | RingEventIdx;

    private readonly IVirtioDevice _device;
    private readonly Virtqueue[] _queues;
    private readonly object _lock = new();
    private readonly object _isrLock = new();
    private readonly int _pciCfgCap;

    private uint _deviceFeatureSelect, _driverFeatureSelect;
    private ulong _driverFeatures;
    private ushort _configVector = NoVector, _queueSelect;
    private volatile byte _status;
    private byte _configGeneration, _isr;
    private bool _active;

    public GuestMemory Memory { get; }
    public IVirtioDevice Device => _device;
    public ulong OfferedFeatures { get; }
    public ulong NegotiatedFeatures { get; private set; }
    public byte Status => _status;
    /// <summary>Why DEVICE_NEEDS_RESET was set (null if it is not).</summary>
    public string? NeedsResetReason { get; private set; }

    public VirtioPciDevice(IVirtioDevice device, GuestMemory memory)
        : base(PciVendorId, (ushort)(PciDeviceIdBase + device.DeviceType), device.PciClassCode, 1,
               PciVendorId, (ushort)(PciDeviceIdBase + device.DeviceType), 1)
    {
        if (device.QueueCount < 1 || device.QueueCount > 64) throw new ArgumentOutOfRangeException(nameof(device), "1..64 queues");
        if (device.ConfigLength > DeviceCfgMax) throw new ArgumentOutOfRangeException(nameof(device), "device config too large");
        _device = device;
        Memory = memory;
        OfferedFeatures = device.DeviceFeatures | TransportFeatures;
        _queues = new Virtqueue[device.QueueCount];
        for (int q = 0; q < _queues.Length; q++)
            _queues[q] = new Virtqueue(q, device.QueueMaxSize(q), memory, SignalQueue, (_, reason) => SetNeedsReset(reason));

        AddMemoryBar(0, Bar0Size, new Bar0(this));
        // Vector per queue plus one for configuration changes, as Linux asks for first.
        AddMsix(_queues.Length + 1, 0, MsixTableOffset, MsixPbaOffset);
        AddVirtioCap(CapCommonCfg, CommonOffset, CommonLength, 16);
        int notify = AddVirtioCap(CapNotifyCfg, NotifyOffset, (uint)(_queues.Length * NotifyOffMultiplier), 20);
        Set32(notify + 16, NotifyOffMultiplier);
        AddVirtioCap(CapIsrCfg, IsrOffset, IsrLength, 16);
        if (device.ConfigLength > 0) AddVirtioCap(CapDeviceCfg, DeviceCfgOffset, (uint)device.ConfigLength, 16);
        _pciCfgCap = AddVirtioCap(CapPciCfg, 0, 0, 20);
        // struct virtio_pci_cfg_cap: the driver picks bar, offset and length, then accesses pci_cfg_data.
        SetWritable(_pciCfgCap + 4, 1);
        SetWritable(_pciCfgCap + 8, 8);
        SetWritable(_pciCfgCap + 16, 4);
    }

    private int AddVirtioCap(byte type, uint offset, uint length, int capLength)
    {
        int at = AddCapability(PciConfig.CapIdVendor, capLength);
        var c = ConfigBytes;
        c[at + 2] = (byte)capLength;
        c[at + 3] = type;
        c[at + 4] = 0; // BAR 0
        Set32(at + 8, offset);
        Set32(at + 12, length);
        return at;
    }

    public Virtqueue Queue(int index) => _queues[index];
    public int QueueCount => _queues.Length;
    public ushort ConfigMsixVector => _configVector;
    public byte ConfigGeneration => _configGeneration;
    public byte IsrStatus { get { lock (_isrLock) return _isr; } }

    // ---- interrupts -------------------------------------------------------------------------------------------

    private void SignalQueue(Virtqueue q)
    {
        if (Msix!.Enabled)
        {
            if (q.MsixVector != NoVector) Msix.Notify(q.MsixVector);
            return;
        }
        lock (_isrLock)
        {
            _isr |= IsrQueue;
            SetIntx(true);
        }
    }

    public void SignalConfigChange()
    {
        lock (_isrLock) _configGeneration++;
        RaiseConfigInterrupt();
    }

    private void RaiseConfigInterrupt()
    {
        if (Msix!.Enabled)
        {
            if (_configVector != NoVector) Msix.Notify(_configVector);
            return;
        }
        lock (_isrLock)
        {
            _isr |= IsrConfig;
            SetIntx(true);
        }
    }

    public void SetNeedsReset(string reason)
    {
        lock (_isrLock)
        {
            if ((_status & StatusNeedsReset) != 0) return;
            NeedsResetReason = reason;
            _status |= StatusNeedsReset;
        }
        // §2.1.2: with DRIVER_OK set the device must also send a configuration change notification.
        if ((_status & StatusDriverOk) != 0) RaiseConfigInterrupt();
    }

    private byte ReadIsr()
    {
        lock (_isrLock)
        {
            byte v = _isr;
            _isr = 0;
            SetIntx(false);
            return v;
        }
    }

    // ---- device status and reset ------------------------------------------------------------------------------

    private void WriteStatus(byte value)
    {
        if (value == 0)
        {
            ResetDevice();
            return;
        }
        byte old, next;
        // Under the ISR lock: a device thread may set DEVICE_NEEDS_RESET concurrently, and the driver cannot clear it.
        lock (_isrLock)
        {
            old = _status;
            next = (byte)((value & ~StatusNeedsReset) | (old & StatusNeedsReset));
            if ((next & StatusFeaturesOk) != 0 && (old & StatusFeaturesOk) == 0)
            {
                // §2.2.2: accept only a subset of what was offered, and only modern drivers (VERSION_1).
                bool ok = (_driverFeatures & ~OfferedFeatures) == 0 && (_driverFeatures & Version1) != 0;
                if (ok) NegotiatedFeatures = _driverFeatures;
                else next &= unchecked((byte)~StatusFeaturesOk);
            }
            _status = next;
        }
        if ((next & StatusDriverOk) != 0 && (old & StatusDriverOk) == 0 && (next & StatusFeaturesOk) != 0 && !_active)
        {
            _active = true;
            _device.Activate(this);
            // Kicks that arrived before DRIVER_OK were not acted on; look at every queue once.
            for (int q = 0; q < _queues.Length; q++)
                if (_queues[q].Enabled) _device.QueueNotify(q);
        }
    }

    private void ResetDevice()
    {
        _device.Reset();
        _active = false;
        foreach (var q in _queues) q.Reset();
        _deviceFeatureSelect = _driverFeatureSelect = 0;
        _driverFeatures = NegotiatedFeatures = 0;
        _configVector = NoVector;
        _queueSelect = 0;
        lock (_isrLock)
        {
            _status = 0;
            NeedsResetReason = null;
            _isr = 0;
            SetIntx(false);
        }
    }

    /// <summary>System reset: the device and the function's config space return to power-on state.</summary>
    public override void ResetConfig()
    {
        lock (_lock)
        {
            ResetDevice();
            // Power-on: the generation counter starts over too (a driver reset keeps counting).
            lock (_isrLock) _configGeneration = 0;
        }
        base.ResetConfig();
    }

    // ---- lifecycle and saved state ----------------------------------------------------------------------------

    /// <summary>Quiesces the device's threads (see <see cref="IVirtioDevice.Stop"/>).</summary>
    public override void Stop() => _device.Stop();

    /// <summary>Resumes the device's threads; it then looks at its queues again.</summary>
    public override void Start() => _device.Start();

    public override void RegisterState(StateRegistry registry, string name) => registry.Add<VirtioPciState>(name, this);

    public VirtioPciState Save()
    {
        lock (_lock)
        {
            VirtioPciState s;
            lock (_isrLock)
                s = new VirtioPciState(SaveFunction(), _device.DeviceType, _status, _deviceFeatureSelect, _driverFeatureSelect,
                    _driverFeatures, NegotiatedFeatures, _queueSelect, _configGeneration, _isr, _configVector, _active,
                    NeedsResetReason, _queues.Select(q => q.Save()).ToArray());
            return _device.SaveState(s);
        }
    }

    /// <summary>
    /// Restores a saved device on this freshly built one (same device type and configuration): the rings are
    /// checked as enabling checks them, and a device that was active is activated again without touching the ring
    /// indices, so chains the driver made available and the device had not taken are processed after
    /// <see cref="Start"/>. The device is left stopped (as the VM is while restoring): <see cref="Start"/> resumes it.
    /// </summary>
    public void Restore(VirtioPciState state)
    {
        Check(state);
        _device.Stop();
        lock (_lock)
        {
            if (_active || _status != 0) ResetDevice();
            RestoreFunction(state.Function);
            for (int q = 0; q < _queues.Length; q++) _queues[q].Restore(state.Queues[q]);
            _deviceFeatureSelect = state.DeviceFeatureSelect;
            _driverFeatureSelect = state.DriverFeatureSelect;
            _driverFeatures = state.DriverFeatures;
            NegotiatedFeatures = state.NegotiatedFeatures;
            _queueSelect = state.QueueSelect;
            _configVector = state.ConfigMsixVector;
            lock (_isrLock)
            {
                _status = state.Status;
                _configGeneration = state.ConfigGeneration;
                _isr = state.Isr;
                NeedsResetReason = (state.Status & StatusNeedsReset) != 0 ? state.NeedsResetReason ?? "restored with DEVICE_NEEDS_RESET" : null;
            }
            _active = state.Active;
            if (_active) _device.Activate(this);
            _device.RestoreState(state);
        }
    }

    private void Check(VirtioPciState s)
    {
        string who = $"virtio device {_device.DeviceType}";
        void Fail(string what) => throw new StateRestoreException($"{who}: {what}");
        if (s.Function == null) Fail("saved state has no PCI function");
        if (s.DeviceType != _device.DeviceType) Fail($"saved state is of virtio device type {s.DeviceType}");
        CheckFunction(s.Function!);
        if (s.Queues == null || s.Queues.Length != _queues.Length) Fail($"saved state does not have {_queues.Length} queues");
        for (int q = 0; q < _queues.Length; q++)
        {
            if (s.Queues![q] == null) Fail($"queue {q} missing");
            string? error = _queues[q].Check(s.Queues[q], Msix!.VectorCount);
            if (error != null) Fail(error);
        }
        if ((s.Isr & ~(IsrQueue | IsrConfig)) != 0) Fail($"ISR 0x{s.Isr:x2}");
        // INTx is asserted exactly while ISR has a bit set (reading the ISR clears both).
        bool intx = (s.Function!.Config[PciConfig.Status] & PciConfig.StatusInterrupt) != 0;
        if (intx != (s.Isr != 0)) Fail("INTx state does not match the ISR");
        if (s.ConfigMsixVector != NoVector && s.ConfigMsixVector >= Msix!.VectorCount) Fail($"config MSI-X vector {s.ConfigMsixVector}");
        if ((s.NegotiatedFeatures & ~OfferedFeatures) != 0) Fail($"negotiated features 0x{s.NegotiatedFeatures:x} were not offered");
        if ((s.Status & StatusFeaturesOk) != 0 && (s.NegotiatedFeatures != s.DriverFeatures || (s.NegotiatedFeatures & Version1) == 0))
            Fail("FEATURES_OK without a valid negotiation");
        if (s.Active && (s.NegotiatedFeatures & Version1) == 0) Fail("active device without negotiated features");
        _device.CheckState(s);
    }

    // ---- common configuration (§4.1.4.3) ---------------------------------------------------------------------

    private static bool FieldAt(int offset, out int start, out int width)
    {
        (start, width) = offset switch
        {
            < 0x10 => (offset & ~3, 4),
            < 0x14 => (offset & ~1, 2),
            0x14 or 0x15 => (offset, 1),
            < 0x20 => (offset & ~1, 2),
            < 0x38 => (offset & ~7, 8),
            < 0x40 => (offset & ~1, 2),
            _ => (0, 0),
        };
        return width != 0;
    }

    private Virtqueue? SelectedQueue => _queueSelect < _queues.Length ? _queues[_queueSelect] : null;

    private ulong GetField(int start)
    {
        var q = SelectedQueue;
        return start switch
        {
            0x00 => _deviceFeatureSelect,
            0x04 => _deviceFeatureSelect switch { 0 => (uint)OfferedFeatures, 1 => (uint)(OfferedFeatures >> 32), _ => 0 },
            0x08 => _driverFeatureSelect,
            0x0C => _driverFeatureSelect switch { 0 => (uint)_driverFeatures, 1 => (uint)(_driverFeatures >> 32), _ => 0 },
            0x10 => _configVector,
            0x12 => (ulong)_queues.Length,
            0x14 => _status,
            0x15 => _configGeneration,
            0x16 => _queueSelect,
            0x18 => q?.Size ?? 0,
            0x1A => q?.MsixVector ?? NoVector,
            0x1C => q?.Enabled == true ? 1UL : 0,
            0x1E => q != null ? (ulong)q.Index : 0,
            0x20 => q?.DescAddress ?? 0,
            0x28 => q?.DriverAddress ?? 0,
            0x30 => q?.DeviceAddress ?? 0,
            0x38 => q != null ? (ulong)q.Index : 0, // queue_notify_data
            _ => 0,                                 // queue_reset: VIRTIO_F_RING_RESET is not offered
        };
    }

    private ushort ValidVector(ulong v) => v < (ulong)Msix!.VectorCount ? (ushort)v : NoVector;

    private void SetField(int start, ulong v)
    {
        var q = SelectedQueue;
        bool queueWritable = q != null && !q.Enabled;
        switch (start)
        {
            case 0x00: _deviceFeatureSelect = (uint)v; break;
            case 0x08: _driverFeatureSelect = (uint)v; break;
            case 0x0C:
                if ((_status & StatusFeaturesOk) != 0) break; // features are frozen once accepted
                if (_driverFeatureSelect == 0) _driverFeatures = (_driverFeatures & 0xFFFF_FFFF_0000_0000UL) | (uint)v;
                else if (_driverFeatureSelect == 1) _driverFeatures = (_driverFeatures & 0xFFFF_FFFFUL) | ((ulong)(uint)v << 32);
                break;
            case 0x10: _configVector = ValidVector(v); break;
            case 0x14: WriteStatus((byte)v); break;
            case 0x16: _queueSelect = (ushort)v; break;
            case 0x18: if (queueWritable) q!.Size = (ushort)v; break;
            case 0x1A: if (q != null) q.MsixVector = ValidVector(v); break;
            case 0x1C:
                // §4.1.4.3.2: the driver must not write 0; only enabling has an effect.
                if (q != null && (v & 1) != 0 && !q.Enabled) q.Enable(NegotiatedFeatures);
                break;
            case 0x20: if (queueWritable) q!.DescAddress = v; break;
            case 0x28: if (queueWritable) q!.DriverAddress = v; break;
            case 0x30: if (queueWritable) q!.DeviceAddress = v; break;
        }
    }

    private ulong ReadCommon(int offset, int size)
    {
        if (!FieldAt(offset, out int start, out int width) || offset + size > start + width) return 0;
        ulong v = GetField(start) >> (8 * (offset - start));
        return size == 8 ? v : v & ((1UL << (8 * size)) - 1);
    }

    private void WriteCommon(int offset, int size, ulong value)
    {
        if (!FieldAt(offset, out int start, out int width) || offset + size > start + width) return;
        ulong v = value;
        if (size < width)
        {
            // Partial write (Linux writes 64-bit ring addresses as two dwords): merge into the current value.
            int shift = 8 * (offset - start);
            ulong mask = ((1UL << (8 * size)) - 1) << shift;
            v = (GetField(start) & ~mask) | ((value << shift) & mask);
        }
        SetField(start, v);
    }

    // ---- BAR 0 ------------------------------------------------------------------------------------------------

    private ulong BarRead(ulong offset, int size)
    {
        lock (_lock)
        {
            if (offset < CommonOffset + CommonLength) return ReadCommon((int)offset, size);
            if (offset - IsrOffset < IsrLength) return offset == IsrOffset ? ReadIsr() : 0UL;
            if (offset - DeviceCfgOffset < (ulong)_device.ConfigLength) return ReadDeviceConfig((int)(offset - DeviceCfgOffset), size);
            if (offset - MsixTableOffset < (ulong)Msix!.TableLength) return Msix.ReadTable(offset - MsixTableOffset, size);
            if (offset - MsixPbaOffset < (ulong)Msix.PbaLength) return Msix.ReadPba(offset - MsixPbaOffset, size);
            return 0;
        }
    }

    private void BarWrite(ulong offset, int size, ulong value)
    {
        // Notifications are the hot path: no lock, the device decides what to do with them.
        if (offset - NotifyOffset < (ulong)_queues.Length * NotifyOffMultiplier)
        {
            int q = (int)((offset - NotifyOffset) / NotifyOffMultiplier);
            if (_active && (_status & StatusNeedsReset) == 0 && _queues[q].Enabled) _device.QueueNotify(q);
            return;
        }
        lock (_lock)
        {
            if (offset < CommonOffset + CommonLength) WriteCommon((int)offset, size, value);
            else if (offset - DeviceCfgOffset < (ulong)_device.ConfigLength) WriteDeviceConfig((int)(offset - DeviceCfgOffset), size, value);
            else if (offset - MsixTableOffset < (ulong)Msix!.TableLength) Msix.WriteTable(offset - MsixTableOffset, size, value);
        }
    }

    private ulong ReadDeviceConfig(int offset, int size)
    {
        if (size == 8) return ReadDeviceConfig(offset, 4) | (ReadDeviceConfig(offset + 4, 4) << 32);
        if (offset + size > _device.ConfigLength) return 0;
        return _device.ReadConfig(offset, size);
    }

    private void WriteDeviceConfig(int offset, int size, ulong value)
    {
        if (size == 8)
        {
            WriteDeviceConfig(offset, 4, (uint)value);
            WriteDeviceConfig(offset + 4, 4, value >> 32);
            return;
        }
        if (offset + size <= _device.ConfigLength) _device.WriteConfig(offset, size, (uint)value);
    }

    private sealed class Bar0(VirtioPciDevice owner) : IMmioDevice
    {
        public ulong Read(ulong offset, int size) => owner.BarRead(offset, size);
        public void Write(ulong offset, int size, ulong value) => owner.BarWrite(offset, size, value);
    }

    // ---- VIRTIO_PCI_CAP_PCI_CFG (§4.1.4.9) ------------------------------------------------------------------

    private bool PciCfgWindow(int offset, int size, out ulong barOffset, out int length)
    {
        int data = _pciCfgCap + 16;
        barOffset = Get32(_pciCfgCap + 8);
        length = (int)Get32(_pciCfgCap + 12);
        return offset == data && size >= length && length is 1 or 2 or 4 && ConfigBytes[_pciCfgCap + 4] == 0
            && barOffset % (ulong)length == 0 && barOffset + (ulong)length <= Bar0Size;
    }

    public override uint ReadConfig(int offset, int size)
    {
        if (PciCfgWindow(offset, size, out ulong barOffset, out int length)) return (uint)BarRead(barOffset, length);
        return base.ReadConfig(offset, size);
    }

    protected override void OnConfigWritten(int offset, int size, uint value)
    {
        if (PciCfgWindow(offset, size, out ulong barOffset, out int length)) BarWrite(barOffset, length, value);
    }
}
