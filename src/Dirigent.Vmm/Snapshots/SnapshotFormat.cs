using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Memory;
using Dirigent.Machine.State;

namespace Dirigent.Vmm.Snapshots;

/// <summary>A disk the snapshot refers to: restored only if it is still the same file with the same contents.</summary>
public sealed record SnapshotDisk
{
    public string Path = "";
    public long Size;
    /// <summary>SHA-256 of the whole image file (hex), taken after the flush at save time.</summary>
    public string Sha256 = "";
}

/// <summary>
/// state.json of a snapshot directory: everything but RAM. Plain data: the VM spec, every component's saved record
/// by name (see <see cref="StateRegistry"/>), the vCPUs' architectural states, and what the memory file and the disks
/// must be for the snapshot to apply.
/// </summary>
public sealed record SnapshotManifest
{
    public const string FormatName = "dirigent-snapshot";
    public const int CurrentVersion = 1;

    public string Format = FormatName;
    public int Version = CurrentVersion;
    public DateTime CreatedUtc;
    /// <summary>The accelerator the VM ran on when saved (restore may choose another).</summary>
    public string Accel = "";
    public VmSpec Spec = new();
    /// <summary>Bytes of guest RAM, the exact size of the memory file.</summary>
    public long MemoryBytes;
    public int Reboots;
    public List<SnapshotDisk> Disks = new();
    public Dictionary<string, SavedUnit> Components = new();
    public List<CpuState> Cpus = new();
}

/// <summary>Reading and writing the parts of a snapshot directory: state.json and the sparse memory file.</summary>
public static partial class SnapshotFiles
{
    public const string StateFile = "state.json";
    public const string MemoryFile = "memory";

    public static readonly JsonSerializerOptions Json = new(StateRegistry.Json) { WriteIndented = true };

    /// <summary>
    /// Guest RAM as one file, regions back to back in address order; all-zero pages are left as holes (never
    /// written), so an idle 512 MiB guest's file takes only the pages it used.
    /// </summary>
    public static unsafe void WriteMemory(GuestMemory mem, string path)
    {
        using var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None);
        f.SetLength((long)mem.RamSize);
        var h = f.SafeFileHandle;
        long fileOff = 0;
        foreach (var r in mem.Regions)
        {
            ulong pages = r.Size / GuestMemory.PageSize;
            ulong p = 0;
            while (p < pages)
            {
                if (IsZeroPage(r.Host + p * GuestMemory.PageSize)) { p++; continue; }
                ulong start = p;
                while (p < pages && p - start < 256 && !IsZeroPage(r.Host + p * GuestMemory.PageSize)) p++;
                var span = new ReadOnlySpan<byte>(r.Host + start * GuestMemory.PageSize, (int)((p - start) * GuestMemory.PageSize));
                RandomAccess.Write(h, span, fileOff + (long)(start * GuestMemory.PageSize));
            }
            fileOff += (long)r.Size;
        }
        f.Flush(flushToDisk: true);
    }

    public static unsafe bool IsZeroPage(byte* p) =>
        new ReadOnlySpan<byte>(p, (int)GuestMemory.PageSize).IndexOfAnyExcept((byte)0) < 0;

    /// <summary>
    /// Loads the memory file into guest RAM: mapped copy-on-write when <paramref name="mapPrivate"/> (the file must
    /// then stay unchanged while the VM runs; snapshot files are never rewritten), else copied, skipping the file's
    /// holes (SEEK_DATA) and zero pages, so restoring an idle guest touches only the memory it used.
    /// </summary>
    public static unsafe void ReadMemory(GuestMemory mem, string path, bool mapPrivate = false)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None);
        if (f.Length != (long)mem.RamSize)
            throw new VmException($"snapshot memory file is {f.Length} bytes, the VM has {mem.RamSize} bytes of RAM", badInput: true);
        var h = f.SafeFileHandle;
        int fd = (int)h.DangerousGetHandle();
        // Copy-on-write mapping of the file: restore costs no reading at all; pages come in as the guest touches them.
        if (mapPrivate && mem.TryMapFilePrivate(fd)) return;
        var buf = GC.AllocateUninitializedArray<byte>(1 << 20);
        long regionStart = 0;
        foreach (var r in mem.Regions)
        {
            long end = regionStart + (long)r.Size;
            long pos = regionStart;
            while (pos < end)
            {
                long data = LSeek(fd, pos, SeekData), hole;
                if (data < 0)
                {
                    if (Marshal.GetLastPInvokeError() == ENXIO) break; // only holes from here on
                    data = pos; hole = end;                              // no SEEK_DATA here: read it all
                }
                else
                {
                    if (data >= end) break;
                    hole = LSeek(fd, data, SeekHole);
                    if (hole < 0 || hole > end) hole = end;
                }
                for (long o = data & ~(long)(GuestMemory.PageSize - 1); o < hole; o += buf.Length)
                {
                    int n = (int)Math.Min(buf.Length, hole - o);
                    int got = RandomAccess.Read(h, buf.AsSpan(0, n), o);
                    if (got != n) throw new VmException("snapshot memory file is truncated", badInput: true);
                    for (int k = 0; k < n; k += (int)GuestMemory.PageSize)
                    {
                        var page = buf.AsSpan(k, (int)Math.Min(GuestMemory.PageSize, (ulong)(n - k)));
                        if (page.IndexOfAnyExcept((byte)0) < 0) continue;
                        page.CopyTo(new Span<byte>(r.Host + (o + k - regionStart), page.Length));
                    }
                }
                pos = hole;
            }
            regionStart = end;
        }
    }

    /// <summary>
    /// Puts the memory file back into the RAM of a VM that has run (a revert in place): mapped copy-on-write over
    /// the old contents when <paramref name="mapPrivate"/> allows it, else RAM cleared and the file copied in
    /// (<see cref="ReadMemory"/> skips the file's zero pages, which must not keep what the guest wrote there).
    /// </summary>
    public static unsafe void ReplaceMemory(GuestMemory mem, string path, bool mapPrivate)
    {
        bool mapped = false;
        using (var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None))
        {
            // Checked before anything is overwritten.
            if (f.Length != (long)mem.RamSize)
                throw new VmException($"snapshot memory file is {f.Length} bytes, the VM has {mem.RamSize} bytes of RAM", badInput: true);
            if (mapPrivate) mapped = mem.TryMapFilePrivate((int)f.SafeFileHandle.DangerousGetHandle());
        }
        if (!mapped)
        {
            foreach (var r in mem.Regions) NativeMemory.Clear(r.Host, (nuint)r.Size);
            ReadMemory(mem, path, mapPrivate: false);
        }
        mem.AllContentsReplaced();
    }

    private const int SeekData = 3, SeekHole = 4, ENXIO = 6;

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long LSeek(int fd, long offset, int whence);

    /// <summary>
    /// SHA-256 of a whole file, hex. Opened with open(2) directly: the VM's own disk image holds .NET's advisory lock
    /// (flock), which a second FileStream would trip over; reading here never writes.
    /// </summary>
    public static string HashFile(string path)
    {
        using var f = OpenReadUnlocked(path);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    /// <summary>
    /// Opens a file for reading with open(2) itself, taking no lock: .NET's FileStream would take a shared flock,
    /// which the VM's exclusive lock on an open disk refuses (the hash above and a sandbox's overlay copy read disks
    /// the VM has open, while it is paused or not yet started).
    /// </summary>
    public static FileStream OpenReadUnlocked(string path)
    {
        int fd = Open(path, 0 /* O_RDONLY */ | 0x80000 /* O_CLOEXEC */);
        if (fd < 0) throw new IOException($"cannot open {path}: errno {Marshal.GetLastPInvokeError()}");
        var h = new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true);
        return new FileStream(h, FileAccess.Read, 1 << 20);
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);
}
