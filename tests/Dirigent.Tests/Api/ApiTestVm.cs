using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Dirigent.Api;
using Dirigent.Vmm;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Tests.Api;

/// <summary>
/// A real VM (software CPU, 16 MiB) running a tiny Multiboot guest, served by a <see cref="VmApiServer"/> on a socket
/// in a temporary directory, and an <see cref="HttpClient"/> that talks to it over that socket.
/// </summary>
internal sealed class ApiTestVm : IAsyncDisposable
{
    public const string ReadyLine = "api guest ready";
    private const uint LoadAddr = 0x10_0000;

    public string Dir { get; }
    public Vm Vm { get; }
    public VmApiServer Server { get; }
    public HttpClient Http { get; }
    public StringWriter Log { get; }
    public string SocketPath => Server.SocketPath;

    private ApiTestVm(string dir, Vm vm, VmApiServer server, StringWriter log)
    {
        Dir = dir;
        Vm = vm;
        Server = server;
        Log = log;
        Http = CreateClient(server.SocketPath);
    }

    /// <summary>Builds and starts the VM and its API server; returns once the guest has printed its ready line.</summary>
    /// <param name="cpus">vCPUs; the guest runs on vCPU 0 only (it never starts the others).</param>
    /// <param name="echo">After the ready line the guest echoes every byte typed on COM1 (polling) instead of halting.</param>
    /// <param name="disks">Sizes of blank raw disks to attach (the guest never touches them).</param>
    public static async Task<ApiTestVm> StartAsync(int cpus = 1, bool echo = false, long[]? disks = null)
    {
        string dir = Directory.CreateTempSubdirectory("dirigent-api-").FullName;
        string kernel = Path.Combine(dir, "guest.bin");
        File.WriteAllBytes(kernel, BuildGuest(echo));
        var spec = new VmSpec { Kernel = kernel, Accel = AccelKind.Emu, Serial = "none", MemoryBytes = 16UL << 20, Cpus = cpus };
        foreach (long size in disks ?? [])
        {
            string image = Path.Combine(dir, $"disk{spec.Disks.Count}.raw");
            using (var f = File.Create(image)) f.SetLength(size);
            spec.Disks.Add(VmSpec.ParseDisk($"{image},format=raw"));
        }
        var vm = Vm.Create(spec, TextWriter.Null);
        var log = new StringWriter();
        VmApiServer server;
        try
        {
            vm.Start();
            server = await VmApiServer.StartAsync(vm, Path.Combine(dir, "api.sock"), log);
        }
        catch
        {
            vm.Dispose();
            Directory.Delete(dir, recursive: true);
            throw;
        }
        var t = new ApiTestVm(dir, vm, server, log);
        await t.WaitForConsole(ReadyLine, 1);
        return t;
    }

    public static UnixFileMode ModeOf(string path)
    {
        if (OperatingSystem.IsWindows()) throw new PlatformNotSupportedException();
        return File.GetUnixFileMode(path);
    }

    public static HttpClient CreateClient(string socketPath)
    {
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                    return new NetworkStream(s, ownsSocket: true);
                }
                catch
                {
                    s.Dispose();
                    throw;
                }
            },
        };
        return new HttpClient(handler) { BaseAddress = new Uri("http://localhost"), Timeout = TimeSpan.FromSeconds(60) };
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
        Vm.Dispose();
        Directory.Delete(Dir, recursive: true);
    }

    // ------------------------------------------------------------------ requests

    public Task<HttpResponseMessage> Put(string path, string? json = null) =>
        Http.PutAsync(path, json == null ? null : new StringContent(json, Encoding.UTF8, "application/json"));

    public Task<HttpResponseMessage> Send(HttpMethod method, string path) => Http.SendAsync(new HttpRequestMessage(method, path));

    /// <summary>GET /v1/vm, parsed.</summary>
    public async Task<JsonElement> GetVm()
    {
        using var r = await Http.GetAsync("/v1/vm");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("application/json", r.Content.Headers.ContentType?.MediaType);
        using var doc = JsonDocument.Parse(await r.Content.ReadAsByteArrayAsync());
        return doc.RootElement.Clone();
    }

    public async Task<double> Uptime() => (await GetVm()).GetProperty("uptime_s").GetDouble();

    /// <summary>Asserts a problem+json answer with this status and returns its detail.</summary>
    public static async Task<string> AssertProblem(HttpResponseMessage r, HttpStatusCode status)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(status == r.StatusCode, $"expected {(int)status}, got {(int)r.StatusCode}: {body}");
        Assert.Equal("application/problem+json", r.Content.Headers.ContentType?.MediaType);
        using var doc = JsonDocument.Parse(body);
        var p = doc.RootElement;
        Assert.Equal("about:blank", p.GetProperty("type").GetString());
        Assert.Equal((int)status, p.GetProperty("status").GetInt32());
        Assert.False(string.IsNullOrEmpty(p.GetProperty("title").GetString()));
        string detail = p.GetProperty("detail").GetString()!;
        Assert.NotEmpty(detail);
        Assert.DoesNotContain('\n', detail);
        Assert.DoesNotContain("   at ", detail); // no stack trace
        Assert.Equal(4, p.EnumerateObject().Count());
        return detail;
    }

    // ------------------------------------------------------------------ bounded waits

    /// <summary>Polls until <paramref name="done"/> holds (a few ms apart, 30 s at most: a failure, not a hang).</summary>
    public static async Task<T> Until<T>(Func<Task<T>> probe, Func<T, bool> done, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var v = await probe();
            if (done(v)) return v;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"timed out waiting for {what}; last: {v}");
            await Task.Delay(10);
        }
    }

    /// <summary>Waits until the console ring holds <paramref name="text"/> at least <paramref name="times"/> times.</summary>
    public Task<string> WaitForConsole(string text, int times) => Until(async () =>
        {
            using var r = await Http.GetAsync("/v1/vm/console");
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            return Encoding.ASCII.GetString(await r.Content.ReadAsByteArrayAsync());
        }, s => Count(s, text) >= times, $"'{text}' x{times} on the console");

    private static int Count(string s, string text)
    {
        int n = 0;
        for (int i = s.IndexOf(text, StringComparison.Ordinal); i >= 0; i = s.IndexOf(text, i + 1, StringComparison.Ordinal)) n++;
        return n;
    }

    /// <summary>VM time advances past <paramref name="after"/>: the VM runs.</summary>
    public Task AssertUptimeAdvancesPast(double after) =>
        Until(Uptime, u => u > after, $"uptime to pass {after}s");

    // ------------------------------------------------------------------ the guest

    /// <summary>
    /// A Multiboot v1 kernel: an IDT whose every gate IRETs (so a stray interrupt is harmless), the ready line on COM1
    /// (polling LSR.THRE), then HLT with interrupts enabled forever: the VM runs, VM time advances, and the vCPU
    /// thread sleeps instead of spinning. With <paramref name="echo"/> it polls LSR.DR instead and writes back every
    /// byte it receives (the vCPU spins with PAUSE: for short tests only).
    /// </summary>
    internal static byte[] BuildGuest(bool echo = false)
    {
        const uint idt = 0x7_0000, idtr = 0x6_F800, stackTop = 0x6_F000;
        var a = new Assembler(32);
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        a.dd(magic); a.dd(flags); a.dd(unchecked(0u - magic - flags));
        // The interrupt stub sits right after the header (at a known address: 32-bit code has no RIP-relative LEA);
        // the entry point follows it.
        const uint stub = LoadAddr + 32;
        a.dd(LoadAddr); a.dd(LoadAddr); a.dd(0u); a.dd(0u); a.dd(stub + 1);
        a.iretd();
        var fill = a.CreateLabel();
        var halt = a.CreateLabel();
        a.mov(esp, stackTop);
        // Interrupt gates (type 0xE, present, DPL 0) to the stub, in the loader's code segment.
        a.mov(ebx, stub);
        a.xor(edx, edx);
        a.mov(dx, cs);
        a.shl(edx, 16);
        a.mov(eax, ebx);
        a.and(eax, 0xFFFF);
        a.or(eax, edx);
        a.mov(edx, ebx);
        a.and(edx, unchecked((int)0xFFFF_0000));
        a.or(edx, 0x8E00);
        a.mov(edi, idt);
        a.mov(ecx, 256);
        a.Label(ref fill);
        a.mov(__dword_ptr[edi], eax);
        a.mov(__dword_ptr[edi + 4], edx);
        a.add(edi, 8);
        a.dec(ecx);
        a.jnz(fill);
        a.mov(__word_ptr[idtr], 256 * 8 - 1);
        a.mov(__dword_ptr[idtr + 2], idt);
        a.lidt(__[idtr]);
        Dirigent.Tests.Lifecycle.TinyGuest.EmitWriteCom1(a, ReadyLine + "\r\n");
        if (echo)
        {
            var poll = a.CreateLabel();
            var idle = a.CreateLabel();
            a.Label(ref poll);
            a.mov(dx, 0x3FD);
            a.@in(al, dx);
            a.test(al, 0x01);  // LSR.DR: a received byte waits in RBR
            a.jz(idle);
            a.mov(dx, 0x3F8);
            a.@in(al, dx);
            Dirigent.Tests.Lifecycle.TinyGuest.EmitPutc(a);
            a.jmp(poll);
            a.Label(ref idle);
            a.pause();
            a.jmp(poll);
        }
        a.Label(ref halt);
        a.sti();
        a.hlt();
        a.jmp(halt);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), LoadAddr);
        return ms.ToArray();
    }
}

/// <summary>A fact that is reported as skipped, with the reason, where curl is not installed.</summary>
internal sealed class CurlFactAttribute : FactAttribute
{
    public CurlFactAttribute()
    {
        if (CurlPath == null) Skip = "curl is not installed (not found on PATH)";
    }

    public static string? CurlPath =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "curl")).FirstOrDefault(File.Exists);
}
