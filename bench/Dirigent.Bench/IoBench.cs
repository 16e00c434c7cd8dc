using System.Diagnostics;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using Dirigent.Cli;
using Dirigent.Vmm;
using Dirigent.Images;

namespace Dirigent.Bench;

/// <summary>
/// virtio-blk inside the default guest, on Dirigent and on QEMU TCG (`-device virtio-blk-pci`, same kernel,
/// initramfs and script) in one run: sequential 64 MiB write and read with O_DIRECT (busybox dd) and 4 KiB random
/// reads/writes with O_DIRECT (<see cref="RandIoTool"/>), each timed inside the guest with /proc/uptime. The disk
/// is a raw file of 128 MiB in the system temp directory, made fresh for each VMM.
/// </summary>
public static partial class IoBench
{
    private const int RandomOps = 2000;

    private static readonly string Script = $"""
        t() {"{"} cut -d' ' -f1 /proc/uptime; {"}"}
        a=$(t); dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct 2>/dev/null || echo FAIL-SEQW; b=$(t); echo MARK-SEQW $a $b
        echo 3 > /proc/sys/vm/drop_caches
        a=$(t); dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null || echo FAIL-SEQR; b=$(t); echo MARK-SEQR $a $b
        a=$(t); randio r {RandomOps} || echo FAIL-RANDR; b=$(t); echo MARK-RANDR $a $b
        a=$(t); randio w {RandomOps} || echo FAIL-RANDW; b=$(t); echo MARK-RANDW $a $b
        poweroff -f
        """;

    public sealed record Result(double SeqWriteMiBs, double SeqReadMiBs, double RandReadIops, double RandWriteIops);

    public static int Run(string? qemu, bool skipDirigent)
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, m => Console.Error.WriteLine($"dirigent: {m}"));
        string work = Directory.CreateTempSubdirectory("dirigent-iobench-").FullName;
        try
        {
            string initrd = Path.Combine(work, "initramfs-randio.cpio.gz");
            WriteInitrd(img.Initramfs, initrd);
            string append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(Script)}";
            Console.WriteLine($"guest: {img.KernelVersion}, 512 MiB, 1 vCPU, raw 128 MiB disk on {work}; {RandomOps} random ops each");
            Result? d = skipDirigent ? null : RunDirigent(img, initrd, append, NewDisk(work, "d.raw"));
            Result? q = qemu != null ? RunQemu(qemu, img, initrd, append, NewDisk(work, "q.raw")) : null;
            Console.WriteLine($"{"metric",-34} {"dirigent",10} {"qemu tcg",10} {"dirigent/qemu",14}");
            Row("seq write 64 MiB O_DIRECT (MiB/s)", d?.SeqWriteMiBs, q?.SeqWriteMiBs);
            Row("seq read 64 MiB O_DIRECT (MiB/s)", d?.SeqReadMiBs, q?.SeqReadMiBs);
            Row("4 KiB random read (IOPS)", d?.RandReadIops, q?.RandReadIops);
            Row("4 KiB random write (IOPS)", d?.RandWriteIops, q?.RandWriteIops);
            Console.WriteLine("(higher is better; ratio > 1 means Dirigent is faster)");
            return 0;
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static string NewDisk(string dir, string name)
    {
        string p = Path.Combine(dir, name);
        using var f = File.Create(p);
        f.SetLength(128L << 20);
        return p;
    }

    /// <summary>The default initramfs followed by a second gzip'd cpio archive holding randio.</summary>
    private static void WriteInitrd(string baseInitramfs, string path)
    {
        using var outFile = File.Create(path);
        using (var src = File.OpenRead(baseInitramfs)) src.CopyTo(outFile);
        using var gz = new GZipStream(outFile, CompressionLevel.Optimal, leaveOpen: true);
        using var cpio = new CpioNewcWriter(gz, leaveOpen: true);
        cpio.AddFile(RandIoTool.GuestPath, RandIoTool.BuildElf(), 0x1ED);
    }

    internal static void Row(string name, double? a, double? b) =>
        Console.WriteLine($"{name,-34} {F(a),10} {F(b),10} {(a is > 0 && b is > 0 ? (a.Value / b.Value).ToString("F2") + "x" : "-"),14}");

    private static string F(double? v) => v.HasValue ? v.Value.ToString(v.Value >= 100 ? "F0" : "F1", CultureInfo.InvariantCulture) : "-";

    private static Result Parse(string text)
    {
        if (text.Contains("FAIL-", StringComparison.Ordinal))
            throw new InvalidOperationException($"a guest I/O command failed:\n{Tail(text)}");
        double Secs(Regex r)
        {
            var m = r.Match(text);
            if (!m.Success) throw new InvalidOperationException($"marker {r} missing in guest output:\n{Tail(text)}");
            double s = double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) - double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            return Math.Max(s, 0.01); // /proc/uptime has 10 ms resolution
        }
        return new Result(64 / Secs(SeqW()), 64 / Secs(SeqR()), RandomOps / Secs(RandR()), RandomOps / Secs(RandW()));
    }

    private static string Tail(string s) => s[^Math.Min(3000, s.Length)..];

    [GeneratedRegex(@"MARK-SEQW ([0-9.]+) ([0-9.]+)")] private static partial Regex SeqW();
    [GeneratedRegex(@"MARK-SEQR ([0-9.]+) ([0-9.]+)")] private static partial Regex SeqR();
    [GeneratedRegex(@"MARK-RANDR ([0-9.]+) ([0-9.]+)")] private static partial Regex RandR();
    [GeneratedRegex(@"MARK-RANDW ([0-9.]+) ([0-9.]+)")] private static partial Regex RandW();

    private static Result RunDirigent(GuestImage img, string initrd, string append, string disk)
    {
        var args = new List<string> { "run", "--kernel", img.Kernel, "--initrd", initrd, "--append", append, "-m", "512",
            "--accel", "emu", "--disk", $"{disk},format=raw" };
        return Parse(RunProcess(DirigentCli.Path, args));
    }

    private static Result RunQemu(string qemu, GuestImage img, string initrd, string append, string disk) =>
        Parse(RunProcess(qemu, ["-M", "pc", "-accel", "tcg", "-m", "512", "-nodefaults", "-nographic", "-serial", "stdio",
            "-kernel", img.Kernel, "-initrd", initrd, "-append", append,
            "-drive", $"file={disk},format=raw,if=none,id=d0,cache=none,aio=threads", "-device", "virtio-blk-pci,drive=d0"]));

    internal static string RunProcess(string exe, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{Path.GetFileName(exe)} exited {p.ExitCode}: {err.Result.Trim()}\n{Tail(output)}");
        return output;
    }
}

/// <summary>The CLI the `./dirigent` script builds (artifacts/cli/dirigent), built here when missing.</summary>
internal static class DirigentCli
{
    public static string Path
    {
        get
        {
            string root = RepoRoot();
            string exe = System.IO.Path.Combine(root, "artifacts", "cli", "dirigent");
            var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true };
            foreach (var a in new[] { "build", System.IO.Path.Combine(root, "src", "Dirigent.Cli"), "-c", "Release", "-o", System.IO.Path.Combine(root, "artifacts", "cli"), "-v", "q", "--nologo" })
                psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0 || !File.Exists(exe)) throw new InvalidOperationException("building the dirigent CLI failed");
            return exe;
        }
    }

    /// <summary>The checkout above the bench's own binary (`dotnet run --project bench/...`), else above the working
    /// directory (a bench built elsewhere with -o, run from the checkout).</summary>
    private static string RepoRoot()
    {
        foreach (string start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
            for (var d = new DirectoryInfo(start); d != null; d = d.Parent)
                if (File.Exists(System.IO.Path.Combine(d.FullName, "Dirigent.slnx"))) return d.FullName;
        throw new InvalidOperationException($"cannot find the repository root (Dirigent.slnx) above {AppContext.BaseDirectory} or the working directory: run the bench from the checkout");
    }
}
