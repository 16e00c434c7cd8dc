using System.IO.Compression;
using System.Text;
using Dirigent.Devices.Firmware;
using Dirigent.Machine.Loaders;
using Dirigent.Machine.Memory;
using Dirigent.Images;

namespace Dirigent.Tests.Images;

/// <summary>
/// Builds the real default image from the Debian mirror (needs apt and network; takes a while), so it only runs
/// when selected: <c>dotnet test --filter Category=Image</c>.
/// </summary>
[Trait("Category", "Image")]
public class DefaultImageBuildTests
{
    [Fact]
    public void BuildsKernelAndInitramfsAndReusesTheCache()
    {
        string cache = Directory.CreateTempSubdirectory("dirigent-image").FullName;
        try
        {
            var log = new List<string>();
            var img = DefaultImage.EnsureBuilt(cache, log.Add);
            Assert.Matches(@"^\d+\.\d+\.\d+-\d+-cloud-amd64$", img.KernelVersion);
            Assert.False(Directory.Exists(Path.Combine(cache, "work")), "work directory is cleaned up");

            // The kernel is a bzImage our loader accepts: place it in a 256 MiB guest and check where it went.
            var kernel = File.ReadAllBytes(img.Kernel);
            Assert.Equal(KernelFormat.LinuxBzImage, KernelImage.Detect(kernel));
            using (var mem = new GuestMemory(256 << 20))
            {
                var k = KernelImage.LoadFiles(mem, img.Kernel, [img.Initramfs], "console=ttyS0", PcFirmware.MemoryMap(mem));
                Assert.Equal(0x100_0000UL, k.LoadAddress);
                Assert.Equal((ulong)new FileInfo(img.Initramfs).Length, k.InitrdSize);
                Assert.True(k.InitrdAddress >= k.LoadEnd);
            }

            using var raw = new MemoryStream();
            using (var z = new GZipStream(File.OpenRead(img.Initramfs), CompressionMode.Decompress)) z.CopyTo(raw);
            var e = CpioNewcReader.Read(raw.ToArray()).ToDictionary(x => x.Name);
            Assert.Equal("\x7F" + "ELF", Encoding.ASCII.GetString(e["bin/busybox"].Data, 0, 4));
            foreach (var m in new[] { "virtio_ring", "virtio", "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net", "virtio-rng" })
            {
                var ko = e[$"lib/modules/{m}.ko"].Data;
                Assert.Equal("\x7F" + "ELF", Encoding.ASCII.GetString(ko, 0, 4)); // uncompressed for busybox insmod
                Assert.Contains("vermagic=" + img.KernelVersion + " ", Encoding.ASCII.GetString(ko));
            }
            Assert.Equal(InitScript.Text, Encoding.UTF8.GetString(e["init"].Data));

            // Second call: served from the cache, nothing downloaded.
            var stamp = File.GetLastWriteTimeUtc(img.Initramfs);
            log.Clear();
            var again = DefaultImage.EnsureBuilt(cache, log.Add);
            Assert.Equal(img, again);
            Assert.Empty(log);
            Assert.Equal(stamp, File.GetLastWriteTimeUtc(img.Initramfs));
        }
        finally { Directory.Delete(cache, recursive: true); }
    }
}
