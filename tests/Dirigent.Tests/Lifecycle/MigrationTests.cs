using Dirigent.Machine.Accel;
using AccelKind = Dirigent.Vmm.AccelKind;
using Differential = Dirigent.Tests.Kvm.Differential;
using Dirigent.Tests.Storage;
using Dirigent.Vmm;

namespace Dirigent.Tests.Lifecycle;

/// <summary>
/// Live migration between two VMs over a Unix socket or loopback TCP: the guest keeps running during pre-copy, then
/// finishes on the target with exactly the output and result of a run that was never moved.
/// </summary>
public class MigrationTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    private static (Vm Target, string Before, string After, Vm Source) MigrateMidRun(string kernel, string uri, AccelKind from, AccelKind? to,
        string mark = "C", string? disk = null, bool pauseAtMark = false)
    {
        var listening = new ManualResetEventSlim();
        Vm? target = null;
        Exception? targetError = null;
        var t = new Thread(() =>
        {
            try { target = Vm.Incoming(uri, to, TextWriter.Null, CancellationToken.None, _ => listening.Set()); }
            catch (Exception e) { targetError = e; listening.Set(); }
        });
        t.Start();
        Assert.True(listening.Wait(Timeout));
        var spec = TinyGuest.Spec(kernel, from);
        if (disk != null) spec.Disks.Add(new DiskConfig(disk, DiskFormat.Auto, false));
        var source = Vm.Create(spec, TextWriter.Null);
        using var cap = new ConsoleCapture(source);
        source.Start();
        Assert.True(cap.WaitFor(mark, Timeout));
        if (pauseAtMark) source.Pause();
        source.Migrate(uri);
        t.Join();
        Assert.Null(targetError);
        Assert.Equal(VmState.Stopped, source.State);
        Assert.Equal(VmExitKind.Migrated, source.ExitReason!.Kind);
        Assert.Equal(VmState.Paused, target!.State);
        return (target, cap.Text, "", source);
    }

    [Theory]
    [InlineData("unix")]
    [InlineData("tcp")]
    public void A_running_guest_migrates_and_finishes_on_the_target_as_if_never_moved(string transport)
    {
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 120);
        var straight = SnapshotTests.Straight(kernel);
        string uri = transport == "unix" ? $"unix:{dir["mig.sock"]}" : $"tcp:127.0.0.1:{FreePort()}";
        // A qcow2 disk travels by hand-over: the source closes it (clean), the target opens it.
        string disk = dir["d.qcow2"];
        Dirigent.Storage.DiskImage.Create(disk, "qcow2", 8L << 20);
        var (target, before, _, source) = MigrateMidRun(kernel, uri, AccelKind.Emu, null, disk: disk);
        using (source)
        using (target)
        {
            var after = target.RunToDebugExit(Timeout);
            Assert.Equal(straight.Out, before + after.Out);
            Assert.Equal(straight.Exit, after.Exit);
            var stats = source.LastMigration!;
            Assert.True(stats.Rounds >= 2, $"pre-copy made {stats.Rounds} rounds");
            Assert.True(stats.PagesSent > 0);
        }
        var (rc, o, e) = QemuImg.Run("check", disk);
        Assert.True(rc == 0, $"qemu-img check after the migration: {o}{e}");
    }

    [SkippableTheory]
    [InlineData(AccelKind.Kvm, AccelKind.Emu)]
    [InlineData(AccelKind.Emu, AccelKind.Kvm)]
    public void A_guest_migrates_across_accelerators(AccelKind from, AccelKind to)
    {
        Differential.RequireKvm();
        using var dir = new TempDir();
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 6, spin: 20_000);
        var straight = SnapshotTests.Straight(kernel);
        // This guest lasts tens of milliseconds: on a loaded host it could end before the pre-copy does (a race of
        // host scheduling, not of migration). The case is about moving the state across accelerators, so the source
        // is paused at the mark and migrated paused.
        var (target, before, _, source) = MigrateMidRun(kernel, $"unix:{dir["x.sock"]}", from, to, "B", pauseAtMark: true);
        using (source)
        using (target)
        {
            var after = target.RunToDebugExit(Timeout);
            Assert.Equal(straight.Out, before + after.Out);
            Assert.Equal(straight.Exit, after.Exit);
        }
    }

    [Fact]
    public void A_failed_migration_leaves_the_source_running()
    {
        using var dir = new TempDir();
        // Long enough (2000 rounds) that the guest is still running after both failures.
        string kernel = TinyGuest.WriteKernel(dir.Path, ticks: 2000);
        using var source = Vm.Create(TinyGuest.Spec(kernel), TextWriter.Null);
        using var cap = new ConsoleCapture(source);
        source.Start();
        Assert.True(cap.WaitFor("B", Timeout));
        // Nobody listens there.
        var e1 = Assert.Throws<VmException>(() => source.Migrate($"unix:{dir["nobody.sock"]}"));
        Assert.Contains("migration to", e1.Message);
        Assert.Equal(VmState.Running, source.State);
        // A target that hangs up mid-stream.
        string uri = $"unix:{dir["drop.sock"]}";
        var ready = new ManualResetEventSlim();
        var peer = new Thread(() =>
        {
            using var l = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
            l.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(dir["drop.sock"]));
            l.Listen(1);
            ready.Set();
            using var s = l.Accept();
            // Takes the start of the stream, then hangs up before the VM state arrives.
            var buf = new byte[64];
            s.Receive(buf);
        });
        peer.Start();
        Assert.True(ready.Wait(Timeout));
        var e2 = Assert.Throws<VmException>(() => source.Migrate(uri));
        peer.Join();
        Assert.True(e2.Message.Contains("keeps running here"), e2.Message);
        Assert.Equal(VmState.Running, source.State);
        // It goes on printing its letters in order, nothing lost or repeated.
        string now = cap.Text;
        char next = (char)(now[^1] + 2);
        Assert.True(cap.WaitFor(next.ToString(), Timeout));
        source.Stop();
        string all = cap.Text;
        for (int i = 0; i < all.Length; i++) Assert.Equal((char)('A' + i), all[i]);
    }

    [Fact]
    public void Garbage_on_the_incoming_socket_is_refused_with_one_line()
    {
        using var dir = new TempDir();
        string sock = dir["in.sock"];
        var listening = new ManualResetEventSlim();
        Exception? err = null;
        var t = new Thread(() =>
        {
            try { Vm.Incoming($"unix:{sock}", AccelKind.Emu, TextWriter.Null, CancellationToken.None, _ => listening.Set()).Dispose(); }
            catch (Exception e) { err = e; }
        });
        t.Start();
        Assert.True(listening.Wait(Timeout));
        using (var s = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
        {
            s.Connect(new System.Net.Sockets.UnixDomainSocketEndPoint(sock));
            s.Send("GET / HTTP/1.1\r\n\r\n"u8.ToArray());
        }
        t.Join();
        var ve = Assert.IsType<VmException>(err);
        Assert.DoesNotContain('\n', ve.Message);
        Assert.Contains("not a Dirigent migration source", ve.Message);
    }

    internal static int FreePort()
    {
        using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        return ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
    }
}
