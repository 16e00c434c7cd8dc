using Dirigent.Tests.Infrastructure;
using System.Net;
using System.Text;
using System.Text.Json;
using Dirigent.Api;
using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Tests.Api;
using Dirigent.Vmm;

namespace Dirigent.Tests.Introspection;

/// <summary>
/// GET /v1/vm/trace/stream: the system-call trace as chunked JSON lines over the per-VM API socket, read as curl -N
/// would, from the default guest running a command (no System.map needed: names and paths are still decoded).
/// </summary>
[Trait("Category", "Boot")]
public class TraceStreamTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromMinutes(5);

    [Fact]
    public async Task StreamShowsTheGuestsOpenatAndWriteAsTheyHappen()
    {
        var img = DefaultImage.EnsureBuilt(VmLauncher.CacheDir, _ => { });
        // The guest cannot know when the stream opens, so it repeats the command: a run after that is seen whole.
        const string script = "echo box > /etc/hostname; while true; do cat /etc/hostname; sleep 1; done";
        var spec = DefaultGuestSpec.For(img, script);
        string dir = Directory.CreateTempSubdirectory("dirigent-tstream-").FullName;
        using var vm = Vm.Create(spec, TextWriter.Null);
        var console = new StringBuilder();
        using var sub = vm.Console.Subscribe(b => { lock (console) console.Append((char)b); });
        var seen = new List<string>();
        string Tail() { lock (console) return $"{seen.Count} lines, last:\n{string.Join('\n', seen.TakeLast(10))}\nconsole tail:\n{(console.Length <= 2000 ? console.ToString() : console.ToString(console.Length - 2000, 2000))}"; }
        try
        {
            vm.Start();
            await using var server = await VmApiServer.StartAsync(vm, Path.Combine(dir, "api.sock"), TextWriter.Null);
            using var http = ApiTestVm.CreateClient(server.SocketPath);
            http.Timeout = Timeout.InfiniteTimeSpan;
            using var guard = new CancellationTokenSource(Guard);
            using var r = await http.SendAsync(new HttpRequestMessage(HttpMethod.Get, "/v1/vm/trace/stream"),
                HttpCompletionOption.ResponseHeadersRead, guard.Token);
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Equal("application/x-ndjson", r.Content.Headers.ContentType?.MediaType);
            Assert.True(r.Headers.TransferEncodingChunked, "the stream is not chunked");
            Assert.True(vm.Introspection.Hooks.SyscallsArmed);
            using var body = new StreamReader(await r.Content.ReadAsStreamAsync(guard.Token), Encoding.UTF8);
            bool open = false, copied = false;
            while (!(open && copied))
            {
                string? line;
                try { line = await body.ReadLineAsync(guard.Token); }
                catch (OperationCanceledException) { throw new TimeoutException($"no openat and copy of /etc/hostname within {Guard}; {Tail()}"); }
                Assert.True(line != null, $"the stream ended early; {Tail()}");
                seen.Add(line!);
                using var e = JsonDocument.Parse(line!);
                var ev = e.RootElement;
                Assert.True(ev.TryGetProperty("time", out _) && ev.TryGetProperty("vcpu", out _) && ev.TryGetProperty("nr", out _), line);
                string? name = ev.GetProperty("name").GetString();
                var args = ev.GetProperty("args");
                // Without the kernel's System.map an execve's return is not matched (the new program returns
                // elsewhere), so the test looks at what cat does: it opens the file, then copies its 4 bytes to fd 1.
                if (name == "openat" && args[1].GetString() == "/etc/hostname")
                {
                    Assert.True(ev.GetProperty("ret").GetInt64() >= 0, line);
                    open = true;
                }
                if (open && name is "sendfile" or "write" && args[0].GetInt32() == 1 && ev.GetProperty("ret").GetInt64() == 4) copied = true;
            }
            r.Dispose(); // the client goes away: the stream's tracer is removed
            await ApiTestVm.Until(() => Task.FromResult(vm.Introspection.Hooks.SyscallsArmed), armed => !armed, "the stream's hook to be removed");
            Assert.Equal(VmState.Running, vm.State);
            // Bad requests are problems, before any stream starts.
            await ApiTestVm.AssertProblem(await http.GetAsync("/v1/vm/trace/stream?pid=3"), HttpStatusCode.BadRequest);
            await ApiTestVm.AssertProblem(await http.GetAsync("/v1/vm/trace/stream?process="), HttpStatusCode.BadRequest);
            await ApiTestVm.AssertProblem(await http.PostAsync("/v1/vm/trace/stream", null), HttpStatusCode.MethodNotAllowed);
            vm.Stop();
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
