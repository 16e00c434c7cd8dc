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
        using var fs = OpenNonBlocking(path);
        // A FIFO (or socket) cannot seek; opened without O_NONBLOCK it would have blocked in open(2) for a writer.
        if (!fs.CanSeek) throw new LoaderException($"{what} {path} is not a regular file (a pipe?)");
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

    /// <summary>open(2) with O_NONBLOCK, which returns at once for a FIFO with no writer and changes nothing for a
    /// regular file (reads of regular files never block in that sense).</summary>
    private static FileStream OpenNonBlocking(string path)
    {
        if (!OperatingSystem.IsLinux()) return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None);
        int fd = NativeOpen.Open(path, NativeOpen.O_RDONLY | NativeOpen.O_NONBLOCK | NativeOpen.O_CLOEXEC);
        if (fd < 0)
        {
            int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            // The same exceptions FileStream gives, so callers' messages stay as they were.
            string msg = new System.ComponentModel.Win32Exception(errno).Message;
            throw errno switch
            {
                2 => new FileNotFoundException($"Could not find file '{Path.GetFullPath(path)}'.", path),
                13 => new UnauthorizedAccessException($"Access to the path '{Path.GetFullPath(path)}' is denied."),
                _ => new IOException($"{msg}: '{path}'"),
            };
        }
        return new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true), FileAccess.Read, 1);
    }
}

internal static partial class NativeOpen
{
    // Linux's generic values (x86-64 and arm64 alike).
    public const int O_RDONLY = 0, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);
}
