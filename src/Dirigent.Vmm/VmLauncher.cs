using Dirigent.Accel.Emu;
using Dirigent.Accel.Emu.Core;
using Dirigent.Devices.Firmware;
using Dirigent.Devices.Serial;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Vmm.Console;
using Dirigent.Images;

namespace Dirigent.Vmm;

/// <summary>`dirigent run`: builds the PC machine for a configuration, loads the guest and runs it to its end.</summary>
public static class VmLauncher
{
    /// <summary>Where the default guest image is cached (DIRIGENT_CACHE, else ~/.cache/dirigent).</summary>
    public static string CacheDir =>
        Environment.GetEnvironmentVariable("DIRIGENT_CACHE") is { Length: > 0 } d ? d :
        Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "dirigent");

    /// <summary>
    /// The default guest's kernel command line: serial console; a panic powers off at once; and no crypto self-tests
    /// at boot (RSA test vectors are ~60% of the stock kernel's boot time on the software CPU). --append replaces it.
    /// </summary>
    public const string DefaultAppend = "console=ttyS0 panic=-1 cryptomgr.notests";

    /// <summary>
    /// A terminal stdin as a plain file stream: .NET's console stream re-applies its own terminal settings around
    /// each read, which would undo the raw mode the serial console needs. (Only for a TTY: on a regular file a
    /// FileStream would read from its own offset, not the shared file position.)
    /// </summary>
    private static Stream RawStdin() =>
        new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, ownsHandle: false), FileAccess.Read, 1);

    private static LoadedKernel LoadGuestInto(MachineModel vm, int cpus, string kernel, List<string> initrds, string append)
    {
        var map = PcFirmware.MemoryMap(vm.Memory);
        ulong rsdp = PcFirmware.WriteTables(vm.Memory, cpus);
        return KernelImage.LoadFiles(vm.Memory, kernel, initrds, append, map, rsdp);
    }

    private static void PrintStats(TextWriter err, Cpu cpu, EmuAccelerator accel, TimeSpan elapsed)
    {
        double s = elapsed.TotalSeconds;
        err.WriteLine($"dirigent: stats: {cpu.InstructionsRetired:N0} instructions in {s:F2} s ({cpu.InstructionsRetired / s / 1e6:F1} MIPS), " +
            $"TLB misses {cpu.TlbMisses:N0}, blocks translated {accel.BlocksTranslated:N0}, invalidated {accel.BlocksInvalidated:N0}");
        var top = cpu.EventsDelivered.Select((n, v) => (n, v)).Where(x => x.n > 0).OrderByDescending(x => x.n).Take(8);
        err.WriteLine("dirigent: stats: events by vector: " + string.Join(", ", top.Select(x => $"{x.v:x2}={x.n:N0}")));
    }

    /// <summary>Open disk images not yet owned by the board: disposed on early return.</summary>
    private sealed class OwnedDisks : IDisposable
    {
        private List<Dirigent.Storage.IBlockDevice>? _disks = new();
        public void Add(Dirigent.Storage.IBlockDevice d) => _disks!.Add(d);
        /// <summary>Hands the disks over; this object no longer disposes them.</summary>
        public List<Dirigent.Storage.IBlockDevice> Release() { var d = _disks!; _disks = null; return d; }
        public void Dispose()
        {
            foreach (var d in _disks ?? []) d.Dispose();
            _disks = null;
        }
    }

    private sealed class SerialSink(Action<byte> write) : ISerialBackend
    {
        public void Write(byte b) => write(b);
    }

    /// <param name="cancel">Stops the VM (as Ctrl-A x would): tests use it as a watchdog.</param>
    public static int Run(VmSpec cfg, TextWriter err, Stream? stdin = null, Stream? stdout = null, bool useTerminal = true,
        CancellationToken cancel = default)
    {
        // Disks first: a bad --disk is the user's to fix before any image is built or downloaded. Until the board
        // takes them, early returns close them (so no image stays locked or marked dirty).
        using var disks = new OwnedDisks();
        try
        {
            foreach (var d in cfg.Disks) disks.Add(DiskFactory.Open(d));
        }
        catch (Dirigent.Storage.BlockDeviceException e)
        {
            err.WriteLine($"dirigent run: {e.Message}");
            return ExitCodes.BadInput;
        }
        string kernel;
        List<string> initrds = cfg.Initrds;
        string append = cfg.Append;
        if (cfg.Kernel == null)
        {
            try
            {
                var img = DefaultImage.EnsureBuilt(CacheDir, m => err.WriteLine($"dirigent: {m}"));
                kernel = img.Kernel;
                if (initrds.Count == 0) initrds = [img.Initramfs];
                if (append.Length == 0) append = DefaultAppend;
            }
            catch (ImageBuildException e)
            {
                err.WriteLine($"dirigent run: cannot build the default guest image: {e.Message}");
                return ExitCodes.BadInput;
            }
        }
        else kernel = cfg.Kernel;

        using var vm = new MachineModel(cfg.MemoryBytes);
        // Bad input ends here, before any accelerator is probed or calibrated: nothing has started yet.
        LoadedKernel loaded;
        try { loaded = LoadGuestInto(vm, cfg.Cpus, kernel, initrds, append); }
        catch (LoaderException e)
        {
            err.WriteLine($"dirigent run: {e.Message}");
            return ExitCodes.BadInput;
        }
        FileStream? serialFile = null;
        if (cfg.Serial.StartsWith("file:", StringComparison.Ordinal))
        {
            try { serialFile = new FileStream(cfg.Serial[5..], FileMode.Create, FileAccess.Write, FileShare.Read); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                err.WriteLine($"dirigent run: cannot open serial output {cfg.Serial[5..]}: {e.Message}");
                return ExitCodes.BadInput;
            }
        }
        using var serialFileScope = serialFile;
        using var nics = new Net.NetBackendSet();
        try { nics.OpenAll(cfg.Nics, err); }
        catch (Net.NetBackendException e)
        {
            err.WriteLine($"dirigent run: --net: {e.Message}");
            return ExitCodes.VmmFailure;
        }
        IAccelerator accel;
        try
        {
            accel = AccelSelector.Create(cfg, vm, err, out string? accelError);
            if (accelError != null)
            {
                    err.WriteLine($"dirigent run: {accelError}");
                return ExitCodes.VmmFailure;
            }
        }
        catch (Dirigent.Accel.Kvm.KvmException e)
        {
            err.WriteLine($"dirigent run: kvm: {e.Message}");
            return ExitCodes.VmmFailure;
        }
        using var accelScope = accel;
        Action<byte> sink = _ => { };
        // The accelerator's own interrupt controllers when it has them (KVM's in-kernel irqchip), else ours.
        Dirigent.Machine.Interrupts.IInKernelIrqChip? irqChip;
        try
        {
            irqChip = accel.CreateInKernelIrqChip(out string irqChipReason);
            if (accel is not EmuAccelerator) err.WriteLine($"{accel.Name}: interrupt controllers: {irqChipReason}");
        }
        catch (Dirigent.Accel.Kvm.KvmException e)
        {
            err.WriteLine($"dirigent run: kvm: {e.Message}");
            return ExitCodes.VmmFailure;
        }
        using var board = new PcBoard(vm, cfg.Cpus, Cpu.TscHz, new SerialSink(b => sink(b)), irqChip, disks.Release(), cfg.Rng);
        foreach (var (backend, mac) in nics.Cards) board.AttachVirtio(vm, new Dirigent.Devices.Virtio.Net.VirtioNet(backend, mac));
        var vcpus = new IVcpu[cfg.Cpus];
        for (int k = 0; k < cfg.Cpus; k++)
        {
            vcpus[k] = accel.CreateVcpu(k);
            if (board.EmulatedInterrupts is not { } router) continue;
            var apic = router.LocalApics[k];
            vcpus[k].AttachInterruptController(apic, apic);
            var cpu = vcpus[k];
            apic.OnNmi = cpu.InjectNmi;
        }

        vcpus[0].SetState(loaded.State);
        // The terminal goes raw only now that nothing can fail before the VM runs (and the finally below restores it).
        Stream output = stdout ?? System.Console.OpenStandardOutput();
        ConsoleFrontend? frontend = null;
        if (cfg.Serial == "stdio")
        {
            frontend = new ConsoleFrontend(output, useTerminal);
            sink = frontend.Write;
        }
        else if (serialFile != null)
        {
            sink = b => { serialFile.WriteByte(b); serialFile.Flush(); };
        }
        if (cfg.Cpus > 1)
            err.WriteLine("dirigent run: note: only vCPU 0 runs; secondary vCPUs (SMP start-up) are not implemented yet");

        var host = new VmHost(vm, cfg.Cpus > 1 ? [vcpus[0]] : vcpus, () =>
        {
            board.Reset();
            vcpus[0].SetState(LoadGuestInto(vm, cfg.Cpus, kernel, initrds, append).State);
        }, cfg.NoReboot, err);
        if (frontend != null)
        {
            frontend.Input = bytes => board.Com1.EnqueueInput(bytes);
            frontend.Quit = host.Quit;
            frontend.StartInput(stdin ?? (TerminalMode.IsTerminal(0) ? RawStdin() : System.Console.OpenStandardInput()));
        }
        using var cancelReg = cancel.Register(host.Quit);
        using var profiler = Environment.GetEnvironmentVariable("DIRIGENT_PROFILE") is { Length: > 0 } profPath && vcpus[0] is Cpu soft
            ? new RipSampler(soft, profPath) : null;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            return host.Run();
        }
        finally
        {
            frontend?.Dispose();
            if (Environment.GetEnvironmentVariable("DIRIGENT_STATS") == "1" && vcpus[0] is Cpu soft0 && accel is EmuAccelerator emu)
                PrintStats(err, soft0, emu, sw.Elapsed);
        }
    }
}
