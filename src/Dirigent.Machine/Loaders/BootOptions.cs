using Dirigent.Machine.Accel;

namespace Dirigent.Machine.Loaders;

/// <summary>A ramdisk or Multiboot module: its bytes and the name (path plus arguments) the guest sees for it.</summary>
public sealed record InitrdFile(string Name, byte[] Data);

/// <summary>What the VMM tells a loader besides the kernel image itself.</summary>
public sealed class BootOptions
{
    public string CommandLine { get; init; } = "";
    /// <summary>Linux concatenates them into one initramfs; Multiboot passes each as a module.</summary>
    public IReadOnlyList<InitrdFile> Initrds { get; init; } = [];
    /// <summary>The machine's memory map (see <see cref="MemoryMap.Pc"/>); loaders place data only in its RAM.</summary>
    public required IReadOnlyList<E820Entry> MemoryMap { get; init; }
    /// <summary>Physical address of the ACPI RSDP, passed to Linux in boot_params (0: the kernel scans for it).</summary>
    public ulong AcpiRsdpAddress { get; init; }
}

public enum KernelFormat { LinuxBzImage, LinuxElf, MultibootElf, MultibootAout }

/// <summary>The result of loading: the vCPU state to set through <see cref="IVcpu.SetState"/> and where things went.</summary>
public sealed record LoadedKernel(
    KernelFormat Format, CpuState State, ulong LoadAddress, ulong LoadEnd,
    ulong InitrdAddress, ulong InitrdSize, ulong BootInfoAddress);
