using Dirigent.Devices;
using Dirigent.Devices.Acpi;
using Dirigent.Devices.Firmware;
using Dirigent.Devices.Input;
using Dirigent.Devices.Interrupts;
using Dirigent.Devices.Misc;
using Dirigent.Devices.Pci;
using Dirigent.Devices.Serial;
using Dirigent.Devices.Timer;
using Dirigent.Devices.Virtio;
using Dirigent.Devices.Virtio.Block;
using Dirigent.Devices.Virtio.Rng;
using Dirigent.Machine;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Memory;
using Dirigent.Machine.State;
using Dirigent.Storage;

namespace Dirigent.Vmm;

/// <summary>
/// The PC machine's fixed devices, at the addresses and IRQs in <see cref="PcPlatform"/>: the interrupt
/// controllers (8259 pair, IOAPIC, one local APIC per vCPU) and PIT with port 0x61 unless the accelerator models
/// them in its kernel, CMOS RTC, COM1, i8042, the ACPI PM block, the debug-exit port, the POST port and the reset
/// ports; and PCI bus 0 (host bridge at 00:00.0, then one virtio-blk function per disk and the optional
/// virtio-rng, in slot order).
/// </summary>
public sealed class PcBoard : IDisposable
{
    /// <summary>Where every device gets its IRQ lines and sends MSIs: <see cref="EmulatedInterrupts"/> or the
    /// accelerator's in-kernel irqchip.</summary>
    public IInterruptSink Interrupts { get; }
    /// <summary>The emulated 8259s, IOAPIC and local APICs; null when an in-kernel irqchip replaces them.</summary>
    public InterruptRouter? EmulatedInterrupts { get; }
    private readonly IInKernelIrqChip? _inKernelIrqChip;
    /// <summary>The emulated PIT; null when the in-kernel irqchip's PIT (with port 0x61) replaces it.</summary>
    public Pit8254? Pit { get; }
    public CmosRtc Rtc { get; }
    public Uart16550 Com1 { get; }
    public I8042 Keyboard { get; }
    public AcpiPm AcpiPm { get; }
    public PciBus Pci { get; }
    /// <summary>Firmware boot only: the BIOS ROM with its shadow RAM, QEMU's fw_cfg and the PIIX3 ISA bridge.</summary>
    public BiosShadow? Shadow { get; }
    public FwCfg? FwCfg { get; }
    public Piix3IsaBridge? IsaBridge { get; }
    /// <summary>The virtio functions on the PCI bus, in slot order.</summary>
    public List<VirtioPciDevice> Virtio { get; } = new();
    private readonly List<IDisposable> _owned = new();

    /// <summary>
    /// Every stateful component under its stable name, in the order reset, start and restore go (stop goes in
    /// reverse): the VM clock first, the ISA devices, the PCI functions by slot, then the local APICs, IOAPIC, PICs
    /// and PIT (see <see cref="RegisterVcpus"/> for why). Whether the interrupt controllers and PIT are ours or the
    /// accelerator's in-kernel ones, they are registered under the same names with the same neutral records, so
    /// snapshots cross accelerators.
    /// </summary>
    public StateRegistry Registry { get; } = new();

    /// <param name="inKernelIrqChip">The accelerator's own interrupt controllers and PIT
    /// (<c>IAccelerator.CreateInKernelIrqChip</c>): ours are then neither created nor put on the buses.</param>
    /// <param name="disks">Images for virtio-blk functions; the board owns and disposes them.</param>
    public PcBoard(MachineModel vm, int cpuCount, ulong tscHz, ISerialBackend console, IInKernelIrqChip? inKernelIrqChip = null,
        IReadOnlyList<IBlockDevice>? disks = null, bool rng = false, BiosShadow? bios = null, IReadOnlyList<int>? bootOrder = null,
        IReadOnlyList<(string Name, byte[] Data)>? fwCfgFiles = null)
    {
        _inKernelIrqChip = inKernelIrqChip;
        Registry.Add("clock", vm.Clock);
        if (inKernelIrqChip != null) Interrupts = inKernelIrqChip;
        else
        {
            var router = new InterruptRouter(vm.Clock, cpuCount, tscHz);
            router.Register(vm.Io, vm.Mmio);
            EmulatedInterrupts = router;
            Interrupts = router;

            Pit = new Pit8254(vm.Clock, Interrupts.Line(PcPlatform.IrqPit));
            vm.Io.Register(PcPlatform.PitPort, Pit8254.PortCount, Pit);
            vm.Io.Register(PcPlatform.SystemControlPortB, 1, new SystemControlPortB(Pit));
        }

        ulong below4G = 0, above4G = 0;
        foreach (var r in vm.Memory.Regions)
        {
            if (r.GuestBase < GuestMemory.HighRamStart) below4G += r.Size;
            else above4G += r.Size;
        }
        Rtc = new CmosRtc(vm.Clock, Interrupts.Line(PcPlatform.IrqRtc), below4G, above4G);
        vm.Io.Register(PcPlatform.CmosPort, CmosRtc.PortCount, Rtc);

        Com1 = new Uart16550(console, Interrupts.Line(PcPlatform.IrqCom1), vm.Clock);
        vm.Io.Register(PcPlatform.Com1Port, Uart16550.PortCount, Com1);

        Keyboard = new I8042(vm, Interrupts.Line(PcPlatform.IrqKeyboard));
        vm.Io.Register(PcPlatform.I8042DataPort, 1, Keyboard.DataPort);
        vm.Io.Register(PcPlatform.I8042CmdPort, 1, Keyboard.CommandPort);

        AcpiPm = new AcpiPm(vm, Interrupts.Line(PcPlatform.IrqAcpiSci));
        vm.Io.Register(PcPlatform.AcpiPmBase, AcpiPm.PortCount, AcpiPm);

        var debugExit = new DebugExit(vm);
        var post = new PostCodePort();
        var resetControl = new ResetControl(vm);
        var port92 = new SystemControlPortA(vm);
        vm.Io.Register(PcPlatform.DebugExitPort, DebugExit.PortCount, debugExit);
        vm.Io.Register(PcPlatform.PostPort, 1, post);
        vm.Io.Register(PcPlatform.ResetControlPort, 1, resetControl);
        vm.Io.Register(PcPlatform.SystemControlPortA, 1, port92);

        // ISA devices now; PCI functions, then the interrupt controllers and PIT once the vCPUs exist (RegisterVcpus).
        Registry.Add("rtc", Rtc);
        Registry.Add("com1", Com1);
        Registry.Add("i8042", Keyboard);
        Registry.Add("acpi-pm", AcpiPm);
        Registry.Add("debug-exit", debugExit);
        Registry.Add("post", post);
        Registry.Add("reset-control", resetControl);
        Registry.Add("port92", port92);

        Pci = new PciBus(vm.Mmio, Interrupts, PcPlatform.PciMmioBase, PcPlatform.PciMmioSize);
        Pci.Register(vm.Io);
        if (bios != null)
        {
            // The i440FX with its PAM registers, and the PIIX3 at 00:01.0 whose PIRQ routing SeaBIOS programs;
            // every function attached after it reaches the ISA IRQs through it.
            Shadow = bios;
            Pci.Attach(new PciHostBridge(bios.SetPam), 0);
            IsaBridge = new Piix3IsaBridge(Interrupts);
            Pci.Attach(IsaBridge, 1);
            Pci.IntxRouter = IsaBridge.Wrap;
        }
        else Pci.Attach(new PciHostBridge(), 0);
        var diskSlots = new List<int>();
        foreach (var disk in disks ?? [])
        {
            _owned.Add(disk);
            // Recorded or replayed: requests are served on the vCPU thread inside the notifying write, so what the
            // device writes into guest RAM lands at a known instruction count (Introspection/RecordReplay).
            var blk = new VirtioBlock(disk, $"dirigent-disk{Virtio.Count}", useWorkerThread: vm.RecordReplay == null);
            _owned.Add(blk);
            diskSlots.Add(AttachVirtio(vm, blk).DevFn >> 3);
        }
        if (rng) AttachVirtio(vm, new VirtioRng());
        if (bios != null)
        {
            var order = (bootOrder ?? []).Where(i => i >= 0 && i < diskSlots.Count).Select(i => BiosConfig.DiskPath(diskSlots[i])).ToList();
            FwCfg = BiosConfig.Create(vm.Memory, cpuCount, order, fwCfgFiles);
            vm.Io.Register(FwCfg.BasePort, FwCfg.PortCount, FwCfg);
            // QEMU's CMOS boot bytes: hard disk first (0x3D), no floppy signature check (0x38 bit 0); the CPU
            // count beyond the first (0x5F), which SeaBIOS compares with fw_cfg's.
            Rtc.SetCmosByte(0x3D, 0x02);
            Rtc.SetCmosByte(0x38, 0x01);
            Rtc.SetCmosByte(0x5F, (byte)(cpuCount - 1));
            Registry.Add("bios-shadow", bios);
            Registry.Add("fw-cfg", FwCfg);
        }
    }

    /// <summary>Puts a virtio device on the next free PCI slot behind the modern PCI transport.</summary>
    public VirtioPciDevice AttachVirtio(MachineModel vm, IVirtioDevice device)
    {
        var fn = new VirtioPciDevice(device, vm.Memory);
        Pci.Attach(fn);
        Virtio.Add(fn);
        return fn;
    }

    /// <summary>
    /// Completes the registry once the vCPUs exist (and every PCI function is attached): the PCI functions, the local
    /// APICs (ours or the in-kernel ones), then the IOAPIC, PICs and PIT, so the order is fixed for snapshots.
    /// </summary>
    public void RegisterVcpus(IReadOnlyList<IVcpu> vcpus)
    {
        // Devices restore before the interrupt controllers: a restored device re-drives its line, and under KVM a
        // level driven after the IOAPIC's restore would be delivered again. The local APICs come before the IOAPIC
        // (restoring KVM's IOAPIC re-delivers pending level pins into them) and after the vCPUs' own state (the
        // VM sets CPU states just before the first lapic/N: CR8 and the TSC the deadline timer counts against).
        RegisterPci();
        for (int k = 0; k < vcpus.Count; k++)
        {
            if (EmulatedInterrupts is { } r) Registry.Add($"lapic/{k}", r.LocalApics[k]);
            else
            {
                int idx = k;
                var chip = _inKernelIrqChip!;
                Registry.Add($"lapic/{k}", new Unit<LocalApicState>(() => { }, () => chip.SaveLocalApic(idx), s => chip.RestoreLocalApic(idx, s)));
            }
        }
        if (EmulatedInterrupts is { } emulated)
        {
            Registry.Add("ioapic", emulated.IoApic);
            Registry.Add("pic", emulated.Pics);
            Registry.Add("pit", Pit!);
        }
        else
        {
            var chip = _inKernelIrqChip!;
            Registry.Add("ioapic", new Unit<IoApicState>(() => { }, chip.SaveIoApic, chip.RestoreIoApic));
            // One reset of the in-kernel chip puts the PICs, IOAPIC, PIT and LAPICs back together.
            Registry.Add("pic", new Unit<PicPairState>(chip.Reset, chip.SavePic, chip.RestorePic));
            Registry.Add("pit", new Unit<PitState>(() => { }, chip.SavePit, chip.RestorePit));
        }
    }

    /// <summary>
    /// Closes every disk image (flushed; qcow2 marked clean) while the devices are stopped, so another process may
    /// open them (live migration's hand-over). <see cref="ReopenDisks"/> undoes it.
    /// </summary>
    public void CloseDisks()
    {
        for (int i = 0; i < _owned.Count; i++)
            if (_owned[i] is IBlockDevice d) { d.Dispose(); _owned[i] = ClosedDisk.Instance; }
    }

    /// <summary>The virtio-blk devices, in the order they were attached.</summary>
    public IReadOnlyList<VirtioBlock> Blocks => _owned.OfType<VirtioBlock>().ToList();

    /// <summary>The guest-visible size of each disk, in the order they were attached.</summary>
    public IReadOnlyList<long> DiskSizes() => Blocks.Select(b => b.Disk.Size).ToList();

    /// <summary>Gives the virtio-blk devices freshly opened images of their disks, in the order they were attached.</summary>
    public void ReopenDisks(IReadOnlyList<IBlockDevice> disks)
    {
        var blks = Blocks;
        if (blks.Count != disks.Count) throw new ArgumentException($"{disks.Count} images for {blks.Count} disks");
        for (int i = 0; i < blks.Count; i++)
        {
            try { blks[i].ReplaceDisk(disks[i]); }
            catch (ArgumentException)
            {
                foreach (var d in disks) d.Dispose();
                throw;
            }
        }
        // The images they replace (closed ones, or an incoming VM's stand-ins) go; the new ones are owned.
        for (int i = _owned.Count - 1; i >= 0; i--)
            if (_owned[i] is IBlockDevice or ClosedDisk) { _owned[i].Dispose(); _owned.RemoveAt(i); }
        _owned.InsertRange(0, disks);
    }

    private sealed class ClosedDisk : IDisposable
    {
        public static readonly ClosedDisk Instance = new();
        public void Dispose() { }
    }

    /// <summary>Writes what the disk images cache to their files (the devices' workers must be stopped).</summary>
    public void FlushDisks()
    {
        foreach (var d in _owned)
            if (d is IBlockDevice b && !b.ReadOnly) b.Flush();
    }

    /// <summary>System reset (reboot): every registered component back to its power-on state.</summary>
    public void Reset() => Registry.ResetAll();

    /// <summary>Stops device worker threads (requests in progress finish) and closes the disk images.</summary>
    public void Dispose()
    {
        // Devices before the images they use.
        for (int i = _owned.Count - 1; i >= 0; i--)
            if (_owned[i] is not IBlockDevice) _owned[i].Dispose();
        foreach (var d in _owned)
            if (d is IBlockDevice) d.Dispose();
        _owned.Clear();
    }

    /// <summary>Each PCI function under pci/00:SS.F, in slot order.</summary>
    private void RegisterPci() => Pci.RegisterState(Registry);

    /// <summary>A component made of delegates: the in-kernel irqchip's parts under the emulated ones' names.</summary>
    private sealed class Unit<T>(Action reset, Func<T> save, Action<T> restore) : IStateful<T> where T : class, ISavedState
    {
        public void Reset() => reset();
        public T Save() => save();
        public void Restore(T state) => restore(state);
    }
}
