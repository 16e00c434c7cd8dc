using Dirigent.Machine.Memory;

namespace Dirigent.Machine.Loaders;

/// <summary>Recognises a kernel image and hands it to the right loader (what -kernel does).</summary>
public static class KernelImage
{
    public static KernelFormat Detect(ReadOnlySpan<byte> image)
    {
        if (LinuxLoader.IsBzImage(image)) return KernelFormat.LinuxBzImage;
        if (MultibootLoader.FindHeader(image) >= 0)
            return ElfImage.IsElf(image) && !HasAoutKludge(image) ? KernelFormat.MultibootElf : KernelFormat.MultibootAout;
        if (ElfImage.IsElf(image)) return KernelFormat.LinuxElf;
        throw new LoaderException("unknown kernel image format: not a bzImage, an ELF vmlinux, or a Multiboot kernel");
    }

    private static bool HasAoutKludge(ReadOnlySpan<byte> image)
    {
        int h = MultibootLoader.FindHeader(image);
        return (System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(image[(h + 4)..]) & (1u << 16)) != 0;
    }

    public static LoadedKernel Load(GuestMemory mem, byte[] image, BootOptions options) => Detect(image) switch
    {
        KernelFormat.LinuxBzImage => LinuxLoader.LoadBzImage(mem, image, options),
        KernelFormat.LinuxElf => LinuxLoader.LoadVmlinux(mem, image, options),
        _ => MultibootLoader.Load(mem, image, options),
    };

    /// <summary>Reads the kernel and initrd files (each initrd's name is its path) and loads them.</summary>
    public static LoadedKernel LoadFiles(GuestMemory mem, string kernelPath, IReadOnlyList<string> initrdPaths,
        string commandLine, IReadOnlyList<E820Entry> memoryMap, ulong acpiRsdpAddress = 0)
    {
        byte[] Read(string p)
        {
            try { return File.ReadAllBytes(p); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            { throw new LoaderException($"cannot read {p}: {e.Message}"); }
        }
        var opts = new BootOptions
        {
            CommandLine = commandLine,
            Initrds = initrdPaths.Select(p => new InitrdFile(p, Read(p))).ToList(),
            MemoryMap = memoryMap,
            AcpiRsdpAddress = acpiRsdpAddress,
        };
        return Load(mem, Read(kernelPath), opts);
    }
}
