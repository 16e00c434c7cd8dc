using Dirigent.Accel.Kvm.Native;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.Memory;

namespace Dirigent.Accel.Kvm;

/// <summary>KVM refused something or is unusable on this host; the message says which ioctl and why.</summary>
public sealed class KvmException(string message) : Exception(message);

/// <summary>
/// The hardware accelerator: Linux KVM through its ioctl interface, by P/Invoke into libc. One VM file descriptor
/// per <see cref="MachineModel"/>, each RAM region registered as one memory slot (KVM reads and writes the same
/// host memory the devices and loaders see, so nothing is copied). Port I/O and MMIO go through the machine model
/// exactly as with the software CPU; interrupts too, unless <see cref="CreateInKernelIrqChip"/> switched to KVM's
/// in-kernel LAPIC/IOAPIC/PIC/PIT (<see cref="KvmIrqChip"/>).
/// </summary>
public sealed unsafe class KvmAccelerator : IAccelerator
{
    public const string DevicePath = "/dev/kvm";
    /// <summary>Set to "user" to keep the emulated interrupt controllers under KVM (debugging, comparisons).</summary>
    public const string UserspaceIrqChipVariable = "DIRIGENT_KVM_IRQCHIP";

    private readonly MachineModel _vm;
    private int _kvmFd = -1;
    private int _vmFd = -1;
    private readonly List<KvmVcpu> _vcpus = new();
    private bool _disposed;

    internal int RunMmapSize { get; }
    private readonly KvmCpuidEntry2[] _supportedCpuid = [];
    /// <summary>What vCPUs get: <see cref="FilterCpuid"/> of what KVM supports, for the irqchip in use.</summary>
    internal KvmCpuidEntry2[] Cpuid => FilterCpuid(_supportedCpuid, IrqChip != null);
    /// <summary>The in-kernel irqchip once <see cref="CreateInKernelIrqChip"/> made it; null: interrupts from userspace.</summary>
    internal KvmIrqChip? IrqChip { get; private set; }
    internal MachineModel Machine => _vm;
    /// <summary>x87/SSE state through KVM_GET/SET_XSAVE; tests clear it to exercise the KVM_GET/SET_FPU path.</summary>
    internal bool HasXsave { get; set; }
    internal bool HasXsaveCapability { get; }
    /// <summary>KVM_GET/SET_VCPU_EVENTS (exceptions, interrupts and NMIs in flight) are there.</summary>
    internal bool HasVcpuEvents { get; }

    public string Name => "kvm";

    public KvmAccelerator(MachineModel vm)
    {
        _vm = vm;
        try
        {
            _kvmFd = OpenSystem();
            foreach (var (cap, name) in new[] { (KvmAbi.CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"), (KvmAbi.CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"),
                         (KvmAbi.CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"), (KvmAbi.CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT") })
                if (Libc.Ioctl(_kvmFd, KvmAbi.CHECK_EXTENSION, cap) <= 0) throw new KvmException($"KVM lacks {name}");
            _vmFd = Check(IoctlRetry(_kvmFd, KvmAbi.CREATE_VM, 0), "KVM_CREATE_VM");
            // Real mode and protected mode without paging need these two under VMX without unrestricted guest.
            Check(Libc.Ioctl(_vmFd, KvmAbi.SET_TSS_ADDR, unchecked((nint)KvmAbi.TssAddr)), "KVM_SET_TSS_ADDR");
            if (Libc.Ioctl(_kvmFd, KvmAbi.CHECK_EXTENSION, KvmAbi.CAP_SET_IDENTITY_MAP_ADDR) > 0)
            {
                ulong idmap = KvmAbi.IdentityMapAddr;
                Check(Libc.Ioctl(_vmFd, KvmAbi.SET_IDENTITY_MAP_ADDR, &idmap), "KVM_SET_IDENTITY_MAP_ADDR");
            }
            int maxSlots = Libc.Ioctl(_kvmFd, KvmAbi.CHECK_EXTENSION, KvmAbi.CAP_NR_MEMSLOTS);
            var regions = vm.Memory.Regions;
            if (maxSlots > 0 && regions.Count > maxSlots) throw new KvmException($"KVM allows {maxSlots} memory slots, the VM needs {regions.Count}");
            for (int i = 0; i < regions.Count; i++)
            {
                var r = regions[i];
                var slot = new KvmUserspaceMemoryRegion
                {
                    Slot = (uint)i, GuestPhysAddr = r.GuestBase, MemorySize = r.Size, UserspaceAddr = (ulong)r.Host,
                };
                Check(Libc.Ioctl(_vmFd, KvmAbi.SET_USER_MEMORY_REGION, &slot), $"KVM_SET_USER_MEMORY_REGION slot {i} (0x{r.GuestBase:x}+0x{r.Size:x})");
            }
            // Firmware ROM (the BIOS below 4 GiB) after the RAM slots, so RAM slot numbers stay the regions' indexes.
            var roms = vm.Memory.Roms;
            for (int j = 0; j < roms.Count; j++)
            {
                var r = roms[j];
                var slot = new KvmUserspaceMemoryRegion
                {
                    Slot = (uint)(regions.Count + j), GuestPhysAddr = r.GuestBase, MemorySize = r.Size, UserspaceAddr = (ulong)r.Host,
                };
                Check(Libc.Ioctl(_vmFd, KvmAbi.SET_USER_MEMORY_REGION, &slot), $"KVM_SET_USER_MEMORY_REGION ROM slot (0x{r.GuestBase:x}+0x{r.Size:x})");
            }
            HasXsave = HasXsaveCapability = Libc.Ioctl(_kvmFd, KvmAbi.CHECK_EXTENSION, KvmAbi.CAP_XSAVE) > 0;
            HasVcpuEvents = Libc.Ioctl(_kvmFd, KvmAbi.CHECK_EXTENSION, KvmAbi.CAP_VCPU_EVENTS) > 0;
            RunMmapSize = Check(Libc.Ioctl(_kvmFd, KvmAbi.GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
            _supportedCpuid = GetSupportedCpuid(_kvmFd);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// Switches this VM to KVM's in-kernel irqchip and PIT when KVM has them (KVM_CAP_IRQCHIP, _PIT2, _PIT_STATE2,
    /// _IRQ_ROUTING, _SIGNAL_MSI) and KVM_CREATE_IRQCHIP succeeds; otherwise returns null, the VM stays as it was and
    /// the caller keeps the emulated controllers. The real-mode TSS and identity map are already placed (KVM wants
    /// them before any vCPU exists, as the irqchip).
    /// </summary>
    public IInKernelIrqChip? CreateInKernelIrqChip(out string reason)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_vcpus)
            if (_vcpus.Count > 0) throw new InvalidOperationException("the in-kernel irqchip must be created before any vCPU");
        if (IrqChip != null) throw new InvalidOperationException("the in-kernel irqchip exists already");
        if (Environment.GetEnvironmentVariable(UserspaceIrqChipVariable) == "user")
        {
            reason = $"{UserspaceIrqChipVariable}=user: emulated interrupt controllers";
            return null;
        }
        if (KvmIrqChip.MissingCapability(_kvmFd) is { } missing)
        {
            reason = $"kvm lacks {missing}: emulated interrupt controllers";
            return null;
        }
        // The board's wiring is the PC's for now; the lead may hand one in through the interface later.
        IrqChip = KvmIrqChip.Create(this, _vmFd, InterruptWiring.Pc, out string? error);
        reason = IrqChip != null ? IrqChip.Description : $"{error}: emulated interrupt controllers";
        return IrqChip;
    }

    /// <summary>Each vCPU's local APIC back to the state KVM gave it at creation (system reset).</summary>
    internal void ResetLocalApics()
    {
        lock (_vcpus)
            foreach (var v in _vcpus) v.ResetLocalApic();
    }

    /// <summary>The vCPU created with <paramref name="index"/>.</summary>
    internal KvmVcpu FindVcpu(int index)
    {
        lock (_vcpus)
            return _vcpus.FirstOrDefault(v => v.Index == index)
                   ?? throw new ArgumentOutOfRangeException(nameof(index), $"no vCPU {index} has been created");
    }

    public IVcpu CreateVcpu(int index)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var v = new KvmVcpu(this, _vmFd, index);
        lock (_vcpus) _vcpus.Add(v);
        return v;
    }

    /// <summary>
    /// Whether KVM can run a VM here: /dev/kvm exists and opens, reports API version 12, has the capabilities this
    /// accelerator relies on, and creates a VM. <paramref name="reason"/> says what failed, or describes KVM.
    /// </summary>
    public static bool Probe(out string reason)
    {
        if (!File.Exists(DevicePath)) { reason = $"{DevicePath} does not exist (no KVM module, or not visible in this container)"; return false; }
        int kvm = -1, vmFd = -1;
        try
        {
            kvm = OpenSystem();
            foreach (var (cap, name) in new[] { (KvmAbi.CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"), (KvmAbi.CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"),
                         (KvmAbi.CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"), (KvmAbi.CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT") })
                if (Libc.Ioctl(kvm, KvmAbi.CHECK_EXTENSION, cap) <= 0) { reason = $"KVM lacks {name}"; return false; }
            vmFd = IoctlRetry(kvm, KvmAbi.CREATE_VM, 0);
            if (vmFd < 0) { reason = $"KVM_CREATE_VM failed: {Libc.ErrorText(Libc.LastErrno)}"; return false; }
            reason = $"KVM API {KvmAbi.ApiVersion} at {DevicePath}";
            return true;
        }
        catch (KvmException e) { reason = e.Message; return false; }
        catch (DllNotFoundException e) { reason = $"libc not loadable: {e.Message}"; return false; }
        finally
        {
            if (vmFd >= 0) Libc.Close(vmFd);
            if (kvm >= 0) Libc.Close(kvm);
        }
    }

    /// <summary>
    /// Whether KVM here runs guests on hardware virtualization: the CPU flags show VMX or SVM, KVM is not PVM (the
    /// kvm_pvm module, in /proc/modules or /sys/module, emulates every guest instruction) and <see cref="Probe"/>
    /// passes. <paramref name="reason"/> says what is missing, or what was found.
    /// </summary>
    public static bool HasHardwareVirtualization(out string reason)
    {
        string flags = "";
        try { flags = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) ?? ""; }
        catch (IOException) { }
        var words = flags.Split([' ', '\t', ':'], StringSplitOptions.RemoveEmptyEntries);
        string? ext = words.Contains("vmx") ? "vmx" : words.Contains("svm") ? "svm" : null;
        bool pvm = Directory.Exists("/sys/module/kvm_pvm");
        try { pvm |= File.Exists("/proc/modules") && File.ReadLines("/proc/modules").Any(l => l.StartsWith("kvm_pvm ", StringComparison.Ordinal)); }
        catch (IOException) { }
        bool usable = Probe(out string why);
        var missing = new List<string>();
        if (ext == null) missing.Add("neither vmx nor svm in the /proc/cpuinfo flags");
        if (pvm) missing.Add("KVM here is PVM (kvm_pvm module), which emulates every guest instruction");
        if (!usable) missing.Add($"KVM unusable: {why}");
        reason = missing.Count == 0 ? $"{ext}, {why}" : "no hardware virtualization: " + string.Join("; ", missing);
        return missing.Count == 0;
    }

    private static int OpenSystem()
    {
        int fd = Libc.Open(DevicePath, Libc.O_RDWR | Libc.O_CLOEXEC);
        if (fd < 0) throw new KvmException($"cannot open {DevicePath}: {Libc.ErrorText(Libc.LastErrno)}");
        int api = Libc.Ioctl(fd, KvmAbi.GET_API_VERSION, 0);
        if (api != KvmAbi.ApiVersion)
        {
            Libc.Close(fd);
            throw new KvmException($"{DevicePath} reports KVM API version {api}, need {KvmAbi.ApiVersion}");
        }
        return fd;
    }

    /// <summary>KVM_CREATE_VM can fail with EINTR on a busy host; everything else is final.</summary>
    private static int IoctlRetry(int fd, nuint req, nint arg)
    {
        while (true)
        {
            int r = Libc.Ioctl(fd, req, arg);
            if (r >= 0 || Libc.LastErrno != Libc.EINTR) return r;
        }
    }

    internal static int Check(int result, string what)
    {
        if (result < 0) throw new KvmException($"{what} failed: {Libc.ErrorText(Libc.LastErrno)}");
        return result;
    }

    private static KvmCpuidEntry2[] GetSupportedCpuid(int kvmFd)
    {
        for (int n = 64; ; n *= 2)
        {
            var buf = new byte[8 + n * sizeof(KvmCpuidEntry2)];
            fixed (byte* p = buf)
            {
                *(uint*)p = (uint)n;
                if (Libc.Ioctl(kvmFd, KvmAbi.GET_SUPPORTED_CPUID, p) < 0)
                {
                    int e = Libc.LastErrno;
                    if (e == Libc.E2BIG && n < 4096) continue;
                    throw new KvmException($"KVM_GET_SUPPORTED_CPUID failed: {Libc.ErrorText(e)}");
                }
                int count = (int)*(uint*)p;
                return new ReadOnlySpan<KvmCpuidEntry2>(p + 8, count).ToArray();
            }
        }
    }

    /// <summary>
    /// What the guest sees in CPUID: everything KVM supports, minus XSAVE and the AVX family. <see cref="CpuState"/>
    /// carries KVM's XSAVE area, but a snapshot must also restore on the software CPU, which has neither AVX nor XSAVE:
    /// a guest told about them would lose YMM/ZMM upper halves, AVX-512 mask registers and AMX tiles there (and KVM's
    /// 4 KiB kvm_xsave cannot hold AMX state at all). (SSE4.x, AES-NI, BMI etc. are kept: their state is all in FXSAVE.) x2APIC and TSC-deadline go
    /// too when the local APIC is the emulated one; KVM's in-kernel LAPIC has both.
    /// </summary>
    internal static KvmCpuidEntry2[] FilterCpuid(KvmCpuidEntry2[] supported, bool inKernelIrqChip = false)
    {
        var list = new List<KvmCpuidEntry2>(supported.Length);
        foreach (var e0 in supported)
        {
            var e = e0;
            switch (e.Function)
            {
                case 0x1:
                    // FMA(12) XSAVE(26) OSXSAVE(27) AVX(28) F16C(29). Also x2APIC(21) and TSC-deadline(24): without an
                    // in-kernel LAPIC KVM refuses the x2APIC and IA32_TSC_DEADLINE MSRs, so the guest must not use them.
                    e.Ecx &= ~((1u << 12) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 29));
                    if (!inKernelIrqChip) e.Ecx &= ~((1u << 21) | (1u << 24));
                    break;
                case 0x7 when e.Index == 0:
                    // AVX2(5) AVX512F(16) DQ(17) IFMA(21) PF(26) ER(27) CD(28) BW(30) VL(31)
                    e.Ebx &= ~((1u << 5) | (1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
                    // AVX512_VBMI(1) VBMI2(6) VAES(9) VPCLMULQDQ(10) VNNI(11) BITALG(12) VPOPCNTDQ(14)
                    e.Ecx &= ~((1u << 1) | (1u << 6) | (1u << 9) | (1u << 10) | (1u << 11) | (1u << 12) | (1u << 14));
                    // AVX512_4VNNIW(2) 4FMAPS(3) VP2INTERSECT(8) AMX_BF16(22) AVX512_FP16(23) AMX_TILE(24) AMX_INT8(25)
                    e.Edx &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
                    break;
                case 0x7 when e.Index == 1:
                    e.Eax &= ~((1u << 4) | (1u << 5)); // AVX_VNNI, AVX512_BF16
                    break;
                case 0xD:
                case 0x1D:
                case 0x1E:
                    continue; // XSAVE state components, AMX tile info: meaningless without XSAVE
                case 0x8000_0001:
                    e.Ecx &= ~((1u << 11) | (1u << 16)); // XOP, FMA4
                    break;
            }
            list.Add(e);
        }
        return list.ToArray();
    }

    private readonly object _dirtyLock = new();
    private bool _dirtyLogging;

    /// <summary>
    /// Re-registers every memory slot with KVM_MEM_LOG_DIRTY_PAGES set (or cleared): KVM then write-protects the slot
    /// and records each page the vCPUs write, for <see cref="CollectDirtyPages"/>. The machine's own dirty log (device
    /// and loader writes) is switched along with it. Throws <see cref="InvalidOperationException"/> when KVM refuses.
    /// </summary>
    public void SetDirtyLogging(bool enabled)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_dirtyLock)
        {
            var log = _vm.Memory.DirtyLog;
            if (enabled == _dirtyLogging)
            {
                if (enabled && !log.Enabled) log.SetEnabled(true);
                return;
            }
            var regions = _vm.Memory.Regions;
            for (int i = 0; i < regions.Count; i++)
            {
                if (SetSlotFlags(i, enabled ? KvmAbi.MEM_LOG_DIRTY_PAGES : 0) is { } error)
                {
                    // Put back the slots already switched, so the VM stays as it was.
                    for (int j = 0; j < i; j++) SetSlotFlags(j, enabled ? 0 : KvmAbi.MEM_LOG_DIRTY_PAGES);
                    throw new InvalidOperationException($"KVM cannot log dirty pages here: {error}");
                }
            }
            _dirtyLogging = enabled;
            if (enabled)
            {
                // KVM starts the slot's log empty; so does ours (the first round sends all of RAM anyway).
                if (!log.Enabled) log.SetEnabled(true);
            }
            else log.SetEnabled(false);
        }
    }

    /// <summary>KVM_SET_USER_MEMORY_REGION for slot <paramref name="slot"/> as created, with other flags; the error, or null.</summary>
    private string? SetSlotFlags(int slot, uint flags)
    {
        var r = _vm.Memory.Regions[slot];
        var region = new KvmUserspaceMemoryRegion
        {
            Slot = (uint)slot, Flags = flags, GuestPhysAddr = r.GuestBase, MemorySize = r.Size, UserspaceAddr = (ulong)r.Host,
        };
        if (Libc.Ioctl(_vmFd, KvmAbi.SET_USER_MEMORY_REGION, &region) == 0) return null;
        return $"KVM_SET_USER_MEMORY_REGION slot {slot} with flags {flags}: {Libc.ErrorText(Libc.LastErrno)}";
    }

    /// <summary>
    /// KVM_GET_DIRTY_LOG for every slot (which also clears KVM's log and write-protects the pages again) and marks
    /// each page it reports in the machine's dirty log; nothing while logging is off. Throws
    /// <see cref="InvalidOperationException"/> when KVM refuses.
    /// </summary>
    public void CollectDirtyPages()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_dirtyLock)
        {
            if (!_dirtyLogging) return;
            var log = _vm.Memory.DirtyLog;
            var regions = _vm.Memory.Regions;
            for (int i = 0; i < regions.Count; i++)
            {
                var r = regions[i];
                ulong pages = r.Size / GuestMemory.PageSize;
                var bitmap = new ulong[(pages + 63) / 64];
                fixed (ulong* bits = bitmap)
                {
                    var d = new KvmDirtyLog { Slot = (uint)i, DirtyBitmap = (ulong)bits };
                    if (Libc.Ioctl(_vmFd, KvmAbi.GET_DIRTY_LOG, &d) < 0)
                        throw new InvalidOperationException($"KVM cannot report dirty pages here: KVM_GET_DIRTY_LOG slot {i}: {Libc.ErrorText(Libc.LastErrno)}");
                }
                for (int w = 0; w < bitmap.Length; w++)
                {
                    ulong v = bitmap[w];
                    while (v != 0)
                    {
                        int b = System.Numerics.BitOperations.TrailingZeroCount(v);
                        v &= v - 1;
                        log.MarkPage(r.GuestBase + (((ulong)w * 64 + (ulong)b) << GuestMemory.PageShift));
                    }
                }
            }
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        lock (_vcpus)
        {
            foreach (var v in _vcpus) v.Dispose();
            _vcpus.Clear();
        }
        IrqChip?.Detach();
        if (_vmFd >= 0) { Libc.Close(_vmFd); _vmFd = -1; }
        if (_kvmFd >= 0) { Libc.Close(_kvmFd); _kvmFd = -1; }
    }
}
