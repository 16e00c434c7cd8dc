using System.Buffers.Binary;
using Dirigent.Storage;

namespace Dirigent.Tests.Cli;

/// <summary>
/// Bad input to the real CLI, as a new user would give it: each case is one clear line on stderr and status 2
/// (nothing started, nothing left behind), never a .NET stack trace or the last-resort "internal error".
/// </summary>
public sealed class BadInputTests : IDisposable
{
    private readonly string _home = Cli.TempDir("dirigent-badinput");
    public void Dispose() => Directory.Delete(_home, recursive: true);

    private static void AssertOneClearLine(CliResult r, int status, string expected)
    {
        Assert.True(r.Exit == status, $"expected status {status}\n{r}");
        string err = r.Err.Trim();
        Assert.DoesNotContain("\n", err);
        Assert.DoesNotContain("   at ", r.Err);
        Assert.DoesNotContain("internal error", r.Err);
        Assert.Contains(expected, err);
    }

    [Theory]
    [InlineData("99999G")]
    [InlineData("100T")]
    [InlineData("16T")]
    [InlineData("2T")]
    [InlineData("1T")]
    public void MemoryBeyondThePhysicalAddressWidthIsRefused(string size)
    {
        var r = Cli.Run(_home, "run", "--memory", size, "--serial", "none");
        AssertOneClearLine(r, 2, "40 physical address bits");
    }

    [Fact]
    public void AKernelThatIsADeviceIsRefusedAtOnce()
    {
        var r = Cli.Run(_home, "run", "--kernel", "/dev/zero", "--serial", "none");
        AssertOneClearLine(r, 2, "not a regular file");
    }

    [Fact]
    public void AKernelThatIsAFifoIsRefusedWithoutWaitingForAWriter()
    {
        string fifo = Path.Combine(_home, "kernel.fifo");
        var mk = System.Diagnostics.Process.Start("mkfifo", [fifo])!;
        mk.WaitForExit();
        Assert.Equal(0, mk.ExitCode);
        // Before, open(2) blocked until some writer opened the FIFO: the run hung here.
        var r = Cli.Run(_home, "run", "--kernel", fifo, "--serial", "none");
        AssertOneClearLine(r, 2, "not a regular file");
    }

    [Fact]
    public void AnEmptyInitrdIsRefused()
    {
        string kernel = Path.Combine(_home, "bzImage"), initrd = Path.Combine(_home, "empty.img");
        File.WriteAllBytes(kernel, FakeBzImage(sysSizeBytes: 4096, fileKernelBytes: 4096));
        File.WriteAllBytes(initrd, []);
        var r = Cli.Run(_home, "run", "--kernel", kernel, "--initrd", initrd, "--serial", "none");
        AssertOneClearLine(r, 2, "is empty");
    }

    [Fact]
    public void ATruncatedBzImageIsRefusedFromItsHeader()
    {
        string kernel = Path.Combine(_home, "bzImage");
        // The header says 1 MiB of protected-mode kernel; the file holds 100000 bytes of it.
        File.WriteAllBytes(kernel, FakeBzImage(sysSizeBytes: 1 << 20, fileKernelBytes: 100000));
        var r = Cli.Run(_home, "run", "--kernel", kernel, "--serial", "none");
        AssertOneClearLine(r, 2, "bzImage is truncated");
    }

    [Fact]
    public void AKernelThatIsADirectoryIsRefused()
    {
        var r = Cli.Run(_home, "run", "--kernel", _home, "--serial", "none");
        AssertOneClearLine(r, 2, "is a directory");
    }

    [Fact]
    public void AQcow2BackingNameOffsetThatOverflowsIsACorruptHeader()
    {
        string img = Path.Combine(_home, "bad.qcow2");
        DiskImage.Create(img, "qcow2", 64 << 20);
        using (var f = new FileStream(img, FileMode.Open, FileAccess.ReadWrite))
        {
            var field = new byte[12];
            BinaryPrimitives.WriteInt64BigEndian(field, long.MaxValue); // backing_file_offset
            BinaryPrimitives.WriteUInt32BigEndian(field.AsSpan(8), 10); // backing_file_size
            f.Position = 8;
            f.Write(field);
        }
        AssertOneClearLine(Cli.Run(_home, "disk", "info", img), 2, "corrupt qcow2 header");
        AssertOneClearLine(Cli.Run(_home, "run", "--kernel", "/dev/null", "--disk", img, "--serial", "none"), 2, "corrupt qcow2 header");
    }

    [Theory]
    [InlineData("20T")]
    [InlineData("2P")]
    [InlineData("8000P")]
    public void AHugeRawDiskIsCreatedWholeOrNotAtAll(string size)
    {
        // Whether the file system takes a sparse file this large depends on it (ext4 stops at 16 TiB, tmpfs and XFS
        // go further): either the image exists with exactly that size, or one line and no file at all.
        string img = Path.Combine(_home, "huge.raw");
        var r = Cli.Run(_home, "disk", "create", img, "-f", "raw", "--size", size);
        if (r.Exit == 0)
        {
            Assert.Equal(DiskInfo.ParseSize(size), new FileInfo(img).Length);
            File.Delete(img);
        }
        else
        {
            AssertOneClearLine(r, 2, "cannot create");
            Assert.False(File.Exists(img), $"a failed create left {img} behind");
        }
    }

    [Fact]
    public void AnUnexpectedFailureIsOneLineStatus6AndACrashReport()
    {
        // DIRIGENT_TEST_CRASH makes the CLI throw an exception nothing handles (a stand-in for a bug).
        var r = Cli.RunWithEnvironment(_home, new() { ["DIRIGENT_TEST_CRASH"] = "1", ["DIRIGENT_CACHE"] = _home }, "version");
        Assert.True(r.Exit == 6, r.ToString());
        string err = r.Err.Trim();
        Assert.DoesNotContain("\n", err);
        Assert.DoesNotContain("   at ", err);
        Assert.StartsWith("dirigent: internal error: InvalidOperationException", err);
        int at = err.IndexOf("(details: ", StringComparison.Ordinal);
        Assert.True(at > 0, err);
        string report = err[(at + "(details: ".Length)..^1];
        Assert.True(File.Exists(report), report);
        Assert.StartsWith(Path.Combine(_home, "crash"), report);
        string text = File.ReadAllText(report);
        Assert.Contains("command: dirigent version", text);
        Assert.Contains("   at ", text); // the stack trace is in the report, not on the terminal
    }

    /// <summary>A bzImage header (boot protocol 2.15, 64-bit entry) with the given syssize and kernel bytes present.</summary>
    private static byte[] FakeBzImage(int sysSizeBytes, int fileKernelBytes)
    {
        const int setupSects = 4, setupSize = (setupSects + 1) * 512;
        var img = new byte[setupSize + fileKernelBytes];
        img[0x1F1] = setupSects;
        BinaryPrimitives.WriteUInt32LittleEndian(img.AsSpan(0x1F4), (uint)(sysSizeBytes / 16));
        BinaryPrimitives.WriteUInt16LittleEndian(img.AsSpan(0x1FE), 0xAA55);
        img[0x200] = 0xEB;
        img[0x201] = 0x66;
        "HdrS"u8.CopyTo(img.AsSpan(0x202));
        BinaryPrimitives.WriteUInt16LittleEndian(img.AsSpan(0x206), 0x020F);
        BinaryPrimitives.WriteUInt16LittleEndian(img.AsSpan(0x236), 1); // XLF_KERNEL_64
        BinaryPrimitives.WriteUInt32LittleEndian(img.AsSpan(0x230), 0x200000); // kernel_alignment
        img[0x234] = 1; // relocatable
        BinaryPrimitives.WriteUInt32LittleEndian(img.AsSpan(0x238), 2047); // cmdline_size
        BinaryPrimitives.WriteUInt32LittleEndian(img.AsSpan(0x260), (uint)Math.Max(sysSizeBytes, 1 << 20)); // init_size
        return img;
    }
}
