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
        byte[] Read(string p, string what)
        {
            try { return ReadBounded(p, what); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            { throw new LoaderException($"cannot read {what} {p}: {e.Message}"); }
        }
        var opts = new BootOptions
        {
            CommandLine = commandLine,
            Initrds = initrdPaths.Select(p => new InitrdFile(p, Read(p, "initrd"))).ToList(),
            MemoryMap = memoryMap,
            AcpiRsdpAddress = acpiRsdpAddress,
        };
        return Load(mem, Read(kernelPath, "kernel"), opts);
    }

    /// <summary>Largest kernel or initrd file read (a .NET array holds at most ~2 GiB; no real kernel comes close).</summary>
    public const long MaxFileBytes = 1L << 30;

    /// <summary>
    /// A kernel or initrd file's bytes: a regular, non-empty file of at most <see cref="MaxFileBytes"/>. A device or
    /// pipe (/dev/zero would be read until memory runs out) and an empty file are refused with a clear message.
    /// </summary>
    public static byte[] ReadBounded(string path, string what)
    {
        if (Directory.Exists(path)) throw new LoaderException($"{what} {path} is a directory");
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None);
        long length = new FileInfo(path).Length;
        if (length == 0)
        {
            // A regular empty file, or something whose size stat does not give (a device, a pipe).
            if (fs.ReadByte() < 0) throw new LoaderException($"{what} {path} is empty");
            throw new LoaderException($"{what} {path} is not a regular file (a device or a pipe?)");
        }
        if (length > MaxFileBytes)
            throw new LoaderException($"{what} {path} is {length >> 20} MiB; at most {MaxFileBytes >> 20} MiB is accepted");
        var data = new byte[length];
        fs.ReadExactly(data);
        return data;
    }
}
