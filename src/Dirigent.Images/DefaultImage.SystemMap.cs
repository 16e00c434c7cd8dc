namespace Dirigent.Images;

public static partial class DefaultImage
{
    public const string SystemMapFile = "System.map";

    /// <summary>
    /// The kernel's symbol table beside the cached kernel (cacheDir/System.map), for introspection (naming the current
    /// process, the KASLR slide). Debian's linux-image package ships only a one-line stub System.map ("The real
    /// System.map is in the linux-image-&lt;version&gt;-dbg package"), so this downloads that -dbg package with apt-get
    /// once and extracts only boot/System.map from it (dpkg-deb streams the data tarball into tar: the package is
    /// ~280 MB, its tree 1.7 GB, never unpacked). Done on demand, not by the image build: only tracing needs it.
    /// Returns the path, or null with the reason in <paramref name="why"/> when it cannot be had.
    /// </summary>
    public static string? EnsureSystemMap(string cacheDir, string kernelVersion, Action<string> log, out string why)
    {
        why = "";
        string map = Path.Combine(cacheDir, SystemMapFile);
        lock (s_buildLock)
        {
            if (IsRealSystemMap(map)) return map;
            string pkg = $"linux-image-{kernelVersion}-dbg";
            string work = Path.Combine(cacheDir, "work-sysmap");
            try
            {
                if (Directory.Exists(work)) Directory.Delete(work, recursive: true);
                Directory.CreateDirectory(work);
                log($"downloading {pkg} with apt-get for the kernel's System.map (once)");
                HostTool.Run("apt-get", ["download", pkg], Remedy, work);
                string deb = Directory.GetFiles(work, pkg + "_*.deb").SingleOrDefault()
                    ?? throw new ImageBuildException($"apt-get download gave no {pkg} package");
                string outDir = Path.Combine(work, "x");
                Directory.CreateDirectory(outDir);
                HostTool.Run("sh", ["-c", "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './usr/lib/debug/boot/System.map-*'", "sh", deb, outDir],
                    "install dpkg and tar");
                string found = Directory.GetFiles(Path.Combine(outDir, "usr", "lib", "debug", "boot"), "System.map-*").SingleOrDefault()
                    ?? throw new ImageBuildException($"{pkg} contains no usr/lib/debug/boot/System.map-*");
                File.Copy(found, map + ".tmp", overwrite: true);
                File.Move(map + ".tmp", map, overwrite: true);
                log($"System.map ready: {map}");
                return map;
            }
            catch (Exception e) when (e is ImageBuildException or IOException or UnauthorizedAccessException)
            {
                why = e.Message;
                return null;
            }
            finally
            {
                try { if (Directory.Exists(work)) Directory.Delete(work, recursive: true); } catch (IOException) { }
            }
        }
    }

    /// <summary>
    /// The System.map fetched beside the default guest's kernel, for a kernel file of the cache's layout (named
    /// <see cref="KernelFile"/>; the map was fetched for that kernel's version); never downloads. Else null.
    /// </summary>
    public static string? CachedSystemMap(string kernelPath)
    {
        if (Path.GetFileName(kernelPath) != KernelFile) return null;
        string map = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(kernelPath))!, SystemMapFile);
        try { return IsRealSystemMap(map) ? map : null; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>A System.map with symbols in it (not Debian's one-line stub).</summary>
    private static bool IsRealSystemMap(string path)
    {
        if (!File.Exists(path)) return false;
        using var r = new StreamReader(path);
        for (int k = 0; k < 2; k++) if (r.ReadLine() == null) return false;
        return true;
    }
}
