using Dirigent.Accel.Emu.Core;

namespace Dirigent.Cli;

/// <summary>
/// A poor man's guest profiler (DIRIGENT_PROFILE=FILE): samples vCPU 0's RIP every millisecond from another thread
/// and writes "samples address" lines, most frequent first, when the VM ends. Symbolize with the guest's System.map
/// (boot with nokaslr).
/// </summary>
internal sealed class RipSampler : IDisposable
{
    private readonly Cpu _cpu;
    private readonly string _path;
    private readonly Dictionary<ulong, long> _counts = new();
    private readonly Thread _thread;
    private volatile bool _stop;

    public RipSampler(Cpu cpu, string path)
    {
        _cpu = cpu;
        _path = path;
        _thread = new Thread(Loop) { IsBackground = true, Name = "dirigent-profiler" };
        _thread.Start();
    }

    private void Loop()
    {
        while (!_stop)
        {
            // A racy read is fine: a sample is a hint, not state.
            ulong rip = _cpu.Rip;
            _counts[rip] = _counts.GetValueOrDefault(rip) + 1;
            Thread.Sleep(1);
        }
    }

    public void Dispose()
    {
        _stop = true;
        _thread.Join();
        File.WriteAllLines(_path, _counts.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Value} {kv.Key:x16}"));
    }
}
