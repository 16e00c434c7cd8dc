using Dirigent.Storage;

namespace Dirigent.Vmm;

/// <summary>Opens a --disk image in its format: the one place that maps formats to IBlockDevice implementations.</summary>
public static class DiskFactory
{
    /// <exception cref="BlockDeviceException">The image cannot be opened (one-line message for the user).</exception>
    public static IBlockDevice Open(string path, DiskFormat format, bool readOnly) => format switch
    {
        DiskFormat.Auto => DiskImage.Open(path, null, readOnly),
        DiskFormat.Raw => DiskImage.Open(path, "raw", readOnly),
        DiskFormat.Qcow2 => DiskImage.Open(path, "qcow2", readOnly),
        _ => throw new BlockDeviceException($"cannot open disk image '{path}': unknown format {format}"),
    };

    public static IBlockDevice Open(DiskConfig disk) => Open(disk.Path, disk.Format, disk.ReadOnly);
}
