using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Dirigent.Machine.Introspection;
using Dirigent.Machine.Time;

namespace Dirigent.Vmm.Introspection;

/// <summary>What <see cref="SyscallTracer"/> keeps from a call's entry until its return.</summary>
internal sealed class TracedCall
{
    public int? Pid, Tid;
    public string? Comm;
    public string? Name;
    public string ArgsJson = "[]";
    public double Time;
    /// <summary>execve: the program's name as the kernel will set comm (the path's last part) and argv[0]'s, for the filter.</summary>
    public string[]? ExecNames;
}

/// <summary>
/// The system-call trace: one JSON object per line and call, written when the call returns (at entry for exit and
/// exit_group, which do not): {"time": VM seconds at entry, "vcpu", "pid", "tid", "comm", "nr", "name", "args": [decoded],
/// "ret", "err"}. Arguments are decoded at entry, through the caller's page tables, for the common calls (paths and
/// argv as strings, fds as numbers, socket addresses as "a.b.c.d:port"); pid/tid/comm come from <see cref="LinuxGuest"/>
/// and are null without a System.map. A process filter keeps calls whose comm (at entry or at return, so an execve
/// into the program counts) equals it.
/// </summary>
public sealed class SyscallTracer : IDisposable
{
    private readonly GuestHooks _hooks;
    private readonly LinuxGuest? _linux;
    private readonly VirtualClock _clock;
    private readonly TextWriter _out;
    private readonly string? _process;
    private readonly IDisposable _hook;
    private readonly object _writeLock = new();
    private long _events;
    // Set by Dispose under _writeLock: a callback still running on a vCPU writes nothing after it.
    private bool _stopped;

    /// <summary>Lines written so far (all of them once disposed).</summary>
    public long Events { get { lock (_writeLock) return _events; } }

    public SyscallTracer(GuestHooks hooks, LinuxGuest? linux, VirtualClock clock, TextWriter output, string? process)
    {
        _hooks = hooks;
        _linux = linux;
        _clock = clock;
        _out = output;
        _process = process;
        if (linux != null) hooks.ThreadKeyProvider = linux.ThreadKeyOf;
        _hook = hooks.AddSyscallHook(OnEnter, OnExit);
    }

    private void OnEnter(IGuestCpu cpu, SyscallEvent e)
    {
        var c = new TracedCall { Time = _clock.NowNs / 1e9 };
        if (_linux != null && _linux.TryCurrent(cpu, out int pid, out int tid, out string? comm)) { c.Pid = pid; c.Tid = tid; c.Comm = comm; }
        c.Name = e.Kind == SyscallKind.Syscall ? (_linux?.SyscallName(cpu, e.Number) ?? LinuxSyscalls.Name(e.Number)) : null;
        c.ArgsJson = DecodeArgs(cpu, c.Name, e.Args);
        if (_process != null && c.Name is "execve" or "execveat") c.ExecNames = ExecNames(cpu, c.Name, e.Args);
        e.SetTag(this, c);
        if (LinuxSyscalls.NeverReturns(c.Name)) Write(e, c, null, null);
    }

    private void OnExit(IGuestCpu cpu, SyscallEvent e)
    {
        if (e.GetTag(this) is not TracedCall c || LinuxSyscalls.NeverReturns(c.Name)) return;
        string? exitComm = null;
        if (_process != null && c.Comm != _process && _linux != null && _linux.TryCurrent(cpu, out _, out _, out var comm)) exitComm = comm;
        Write(e, c, e.Return, exitComm);
    }

    private void Write(SyscallEvent e, TracedCall c, ulong? ret, string? exitComm)
    {
        // A program that renames itself after execve (busybox applets run as /proc/self/exe, comm "exe", then set
        // their name) is still kept from its execve on: by the path's and argv[0]'s last part.
        if (_process != null && c.Comm != _process && exitComm != _process && !(c.ExecNames?.Contains(_process) ?? false)) return;
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            w.WriteNumber("time", Math.Round(c.Time, 6));
            w.WriteNumber("vcpu", e.Vcpu);
            if (c.Pid is int p) w.WriteNumber("pid", p); else w.WriteNull("pid");
            if (c.Tid is int t) w.WriteNumber("tid", t); else w.WriteNull("tid");
            if (c.Comm != null) w.WriteString("comm", c.Comm); else w.WriteNull("comm");
            w.WriteNumber("nr", e.Number);
            if (c.Name != null) w.WriteString("name", c.Name); else w.WriteNull("name");
            if (e.Kind != SyscallKind.Syscall) w.WriteString("abi", e.Kind == SyscallKind.Int80 ? "int80" : "sysenter");
            w.WritePropertyName("args");
            w.WriteRawValue(c.ArgsJson, skipInputValidation: true);
            if (ret is ulong r)
            {
                long sr = e.Kind == SyscallKind.Syscall ? (long)r : (int)r;
                w.WriteNumber("ret", sr);
                if (LinuxSyscalls.Errno(sr) is { } err) w.WriteString("err", err);
            }
            else w.WriteNull("ret");
            if (exitComm != null && exitComm != c.Comm) w.WriteString("comm_after", exitComm);
            w.WriteEndObject();
        }
        string line = Encoding.UTF8.GetString(ms.GetBuffer(), 0, (int)ms.Length);
        lock (_writeLock)
        {
            if (_stopped) return;
            _out.WriteLine(line);
            _out.Flush();
            _events++;
        }
    }

    private static string[] ExecNames(IGuestCpu cpu, string name, ulong[] a)
    {
        int pathArg = name == "execveat" ? 1 : 0;
        var names = new List<string>();
        if (ReadString(cpu, a[pathArg], 4096) is { } path) names.Add(Path.GetFileName(path));
        Span<byte> b = stackalloc byte[8];
        if (cpu.ReadVirtual(a[pathArg + 1], b) == 8 && ReadString(cpu, BinaryPrimitives.ReadUInt64LittleEndian(b), 4096) is { } argv0)
            names.Add(Path.GetFileName(argv0));
        // comm keeps 15 bytes of the name (TASK_COMM_LEN).
        return names.Select(n => n.Length > 15 ? n[..15] : n).ToArray();
    }

    // ---- argument decoding ----

    internal static string DecodeArgs(IGuestCpu cpu, string? name, ulong[] a)
    {
        string sig = (name != null ? LinuxSyscalls.Signature(name) : null) ?? "xxxxxx";
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartArray();
            for (int k = 0; k < sig.Length && k < a.Length; k++)
            {
                ulong v = a[k];
                switch (sig[k])
                {
                    case 'd': w.WriteNumberValue((int)v); break;
                    case 'i': w.WriteNumberValue((long)v); break;
                    case 'u': w.WriteNumberValue(v); break;
                    case 's': WriteStringOrPointer(w, cpu, v, 4096); break;
                    case 'S': WriteStringOrPointer(w, cpu, v, (int)Math.Min(k + 1 < a.Length ? a[k + 1] : 64, 128), stopAtNul: false); break;
                    case 'a': WriteArgv(w, cpu, v); break;
                    case 'k': WriteSockaddr(w, cpu, v, k + 1 < a.Length ? a[k + 1] : 0); break;
                    default: w.WriteStringValue($"0x{v:x}"); break;
                }
            }
            w.WriteEndArray();
        }
        return Encoding.UTF8.GetString(ms.GetBuffer(), 0, (int)ms.Length);
    }

    private static void WriteStringOrPointer(Utf8JsonWriter w, IGuestCpu cpu, ulong p, int max, bool stopAtNul = true)
    {
        string? s = p == 0 ? null : ReadString(cpu, p, max, stopAtNul);
        if (s != null) w.WriteStringValue(s);
        else if (p == 0) w.WriteNullValue();
        else w.WriteStringValue($"0x{p:x}");
    }

    /// <summary>A NUL-terminated string in guest-virtual memory (or max bytes of a buffer); null if unreadable.</summary>
    internal static string? ReadString(IGuestCpu cpu, ulong p, int max, bool stopAtNul = true)
    {
        var buf = new byte[Math.Max(max, 0)];
        int got = cpu.ReadVirtual(p, buf);
        if (got == 0 && max > 0) return null;
        int n = got;
        if (stopAtNul)
        {
            int z = Array.IndexOf(buf, (byte)0, 0, got);
            if (z < 0 && got < max) return null; // ran into an unmapped page before the end
            if (z >= 0) n = z;
        }
        return Encoding.UTF8.GetString(buf, 0, n);
    }

    private static void WriteArgv(Utf8JsonWriter w, IGuestCpu cpu, ulong p)
    {
        if (p == 0) { w.WriteNullValue(); return; }
        w.WriteStartArray();
        Span<byte> b = stackalloc byte[8];
        for (int k = 0; k < 64; k++)
        {
            if (cpu.ReadVirtual(p + (ulong)k * 8, b) != 8) { w.WriteStringValue("…"); break; }
            ulong s = BinaryPrimitives.ReadUInt64LittleEndian(b);
            if (s == 0) break;
            WriteStringOrPointer(w, cpu, s, 4096);
        }
        w.WriteEndArray();
    }

    private static void WriteSockaddr(Utf8JsonWriter w, IGuestCpu cpu, ulong p, ulong len)
    {
        var b = new byte[Math.Min(Math.Max(len, 2), 128)];
        if (p == 0 || cpu.ReadVirtual(p, b) < 2) { w.WriteStringValue($"0x{p:x}"); return; }
        ushort family = BinaryPrimitives.ReadUInt16LittleEndian(b);
        if (family == 2 && b.Length >= 8)
            w.WriteStringValue($"{b[4]}.{b[5]}.{b[6]}.{b[7]}:{BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(2))}");
        else if (family == 10 && b.Length >= 24)
            w.WriteStringValue($"[{new System.Net.IPAddress(b.AsSpan(8, 16))}]:{BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(2))}");
        else if (family == 1)
        {
            int z = Array.IndexOf(b, (byte)0, 2);
            // An abstract socket's name starts with NUL: shown with a leading @, as ss does.
            w.WriteStringValue(b.Length > 2 && b[2] == 0 ? "@" + Encoding.UTF8.GetString(b, 3, Math.Max(0, (z > 3 ? z : b.Length) - 3)) : "unix:" + Encoding.UTF8.GetString(b, 2, (z < 0 ? b.Length : z) - 2));
        }
        else w.WriteStringValue($"family {family} at 0x{p:x}");
    }

    public void Dispose()
    {
        _hook.Dispose();
        lock (_writeLock) _stopped = true;
        if (_linux != null && _hooks.ThreadKeyProvider == _linux.ThreadKeyOf) _hooks.ThreadKeyProvider = null;
    }
}
