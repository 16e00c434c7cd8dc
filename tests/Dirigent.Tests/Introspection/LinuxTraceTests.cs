using Dirigent.Tests.Infrastructure;
using System.Text;
using System.Text.Json;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Vmm;
using Dirigent.Vmm.Introspection;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// Introspection of the default guest (Debian's cloud kernel + busybox initramfs) on the software CPU, with no agent
/// in it: the system-call trace names processes and decodes paths, the process list reads the kernel's task list,
/// and a memory dump writes guest RAM. Needs the kernel's System.map (from Debian's -dbg package, fetched once into
/// the image cache); skipped with the reason when apt cannot provide it.
/// </summary>
[Trait("Category", "Boot")]
public class LinuxTraceTests
{
    private static readonly Lazy<GuestImage> s_image = new(() => DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { }));
    private static readonly TimeSpan Guard = TimeSpan.FromMinutes(5);

    [SkippableFact]
    public void TraceShowsExecveOpenatAndProcessNamesThenProcessListAndMemoryDump()
    {
        var img = s_image.Value;
        string? map = DefaultImage.EnsureSystemMap(VmLauncher.CacheDir, img.KernelVersion, _ => { }, out string why);
        Skip.If(map == null, $"no System.map for kernel {img.KernelVersion}: {why}");
        const string script = "echo tracehost > /etc/hostname; cat /etc/hostname; ls /tmp; echo WORKLOAD-DONE; sleep 600";
        var spec = DefaultGuestSpec.For(img, script);
        using var vm = Vm.Create(spec, TextWriter.Null);
        var console = new StringBuilder();
        using var done = new ManualResetEventSlim();
        using var sub = vm.Console.Subscribe(b =>
        {
            lock (console)
            {
                console.Append((char)b);
                if (console.Length > 20 && console.ToString(console.Length - 14, 14).Contains("WORKLOAD-DONE")) done.Set();
            }
        });
        vm.Introspection.LoadSystemMap(map!);
        var trace = new StringWriter();
        vm.Introspection.StartSyscallTrace(TextWriter.Synchronized(trace));
        // A second, filtered trace beside it (what process=cat does).
        var catTrace = new StringWriter();
        var catTracer = vm.Introspection.NewSyscallTracer(TextWriter.Synchronized(catTrace), "cat");
        vm.Start();
        // Waits on the guest's own marker (an event), with a generous hang guard.
        Assert.True(done.Wait(Guard), $"the guest did not finish its workload; console tail:\n{Tail(console)}");
        long events = vm.Introspection.StopSyscallTrace();
        catTracer.Dispose();
        var lines = trace.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(events, lines.Count);
        string Dump() => string.Join('\n', trace.ToString().Split('\n').TakeLast(60));

        // The busybox shell runs cat by execve (of itself, /proc/self/exe, with argv "cat /etc/hostname").
        var exec = lines.FirstOrDefault(e => Name(e) == "execve" && e.GetProperty("args")[1].ValueKind == JsonValueKind.Array
            && e.GetProperty("args")[1].EnumerateArray().Select(a => a.GetString()).SequenceEqual(["cat", "/etc/hostname"]));
        Assert.True(exec.ValueKind == JsonValueKind.Object, $"no execve of cat /etc/hostname in the trace:\n{Dump()}");
        Assert.Equal(0, exec.GetProperty("ret").GetInt64());
        Assert.StartsWith("/", exec.GetProperty("args")[0].GetString());
        int catPid = exec.GetProperty("pid").GetInt32();
        Assert.True(catPid > 1);
        // cat itself (comm "cat", same pid after the execve) opens the file: fd >= 0.
        var open = lines.FirstOrDefault(e => Name(e) == "openat" && e.GetProperty("comm").GetString() == "cat"
            && e.GetProperty("args")[1].GetString() == "/etc/hostname");
        Assert.True(open.ValueKind == JsonValueKind.Object, $"no openat of /etc/hostname by cat:\n{Dump()}");
        Assert.Equal(catPid, open.GetProperty("pid").GetInt32());
        Assert.True(open.GetProperty("ret").GetInt64() >= 0, open.ToString());
        // It copies the file's 10 bytes to its standard output (busybox cat: sendfile, or read and write), and ls opens /tmp.
        Assert.Contains(lines, e => Name(e) is "sendfile" or "write" && e.GetProperty("comm").GetString() == "cat"
            && e.GetProperty("args")[0].GetInt32() == 1 && e.GetProperty("ret").GetInt64() == 10);
        Assert.Contains(lines, e => Name(e) == "openat" && e.GetProperty("comm").GetString() == "ls" && e.GetProperty("args")[1].GetString() == "/tmp" && e.GetProperty("ret").GetInt64() >= 0);
        // The filtered trace: only cat's calls, from the execve that started it (busybox's applet runs as "exe" first).
        var cat = catTrace.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal("execve", Name(cat[0]));
        Assert.All(cat, e => Assert.True(e.GetProperty("comm").GetString() is "cat" or "exe" || Name(e) == "execve", e.ToString()));
        Assert.Contains(cat, e => Name(e) == "openat" && e.GetProperty("args")[1].GetString() == "/etc/hostname");
        Assert.DoesNotContain(cat, e => e.GetProperty("comm").GetString() == "ls");
        // Every event of a user process has a pid and a name.
        Assert.All(lines, e => Assert.Equal(JsonValueKind.String, e.GetProperty("comm").ValueKind));

        var procs = vm.Introspection.ListProcesses();
        Assert.Equal((0, "swapper/0"), (procs[0].Pid, procs[0].Comm));
        Assert.Contains(procs, p => p.Pid == 1);
        Assert.Contains(procs, p => p.Comm == "sleep");
        Assert.Contains(procs, p => p.Comm == "kthreadd" && p.Pid == 2);

        string dir = Path.Combine(Path.GetTempPath(), $"dirigent-dump-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string elf = Path.Combine(dir, "guest.elf");
            vm.Introspection.DumpMemory(elf, MemoryDumpFormat.Elf);
            var head = new byte[64];
            using (var f = File.OpenRead(elf))
            {
                f.ReadExactly(head);
                Assert.True(f.Length > (long)spec.MemoryBytes, $"ELF core of {f.Length} bytes for {spec.MemoryBytes} of RAM");
            }
            Assert.Equal("\u007fELF"u8.ToArray(), head[..4]);
            Assert.Equal(4, BitConverter.ToUInt16(head, 16)); // ET_CORE
            string raw = Path.Combine(dir, "guest.raw");
            vm.Introspection.DumpMemory(raw, MemoryDumpFormat.Raw);
            // The hostname the guest wrote is in its RAM (the page cache of its tmpfs root).
            Assert.True(Contains(File.ReadAllBytes(raw), "tracehost\n"u8), "the guest's file contents are not in the raw dump");
        }
        finally { Directory.Delete(dir, recursive: true); }
        vm.Stop();
    }

    /// <summary>What `dirigent run --trace syscalls,process=cat,output=FILE` does: the launcher loads the System.map kept beside the default kernel.</summary>
    [SkippableFact]
    public void RunWithTraceOptionWritesTheFilteredTraceFile()
    {
        var img = s_image.Value;
        Skip.If(DefaultImage.EnsureSystemMap(VmLauncher.CacheDir, img.KernelVersion, _ => { }, out string why) == null,
            $"no System.map for kernel {img.KernelVersion}: {why}");
        string file = Path.Combine(Path.GetTempPath(), $"dirigent-trace-{Environment.ProcessId}-{Guid.NewGuid():N}.jsonl");
        try
        {
            var spec = new VmSpec
            {
                Kernel = img.Kernel,
                Initrds = [img.Initramfs],
                Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument("echo clihost > /etc/hostname; cat /etc/hostname")}",
                MemoryBytes = 256UL << 20,
                Accel = AccelKind.Emu,
            };
            var r = new Dirigent.Tests.Boot.GuestRunner();
            int rc = r.Run(spec, Guard, new RunOptions { Trace = TraceOption.Parse($"syscalls,process=cat,output={file}") });
            Assert.True(rc == 0, $"exit status {rc}; errors: {r.Errors}");
            Assert.Contains("clihost", r.Output);
            var lines = File.ReadAllLines(file).Select(l => JsonDocument.Parse(l).RootElement).ToList();
            Assert.Contains(lines, e => Name(e) == "openat" && e.GetProperty("comm").GetString() == "cat"
                && e.GetProperty("args")[1].GetString() == "/etc/hostname" && e.GetProperty("ret").GetInt64() >= 0);
            Assert.Contains(lines, e => Name(e) == "exit_group" && e.GetProperty("comm").GetString() == "cat");
            Assert.DoesNotContain(lines, e => e.GetProperty("comm").GetString() is "sh" or "init" && Name(e) != "execve");
        }
        finally { File.Delete(file); }
    }

    private static string? Name(JsonElement e) => e.GetProperty("name").GetString();

    private static bool Contains(byte[] hay, ReadOnlySpan<byte> needle) => hay.AsSpan().IndexOf(needle) >= 0;

    private static string Tail(StringBuilder sb) { lock (sb) return sb.Length <= 3000 ? sb.ToString() : sb.ToString(sb.Length - 3000, 3000); }
}
