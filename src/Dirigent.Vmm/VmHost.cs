using Dirigent.Machine;
using Dirigent.Machine.Accel;

namespace Dirigent.Vmm;

/// <summary>
/// Runs a machine's vCPUs, one host thread each, and turns what ends them into the VM's fate: power-off, reset
/// (reboot, as QEMU does, unless --no-reboot), debug-exit, triple fault, or a VMM failure.
/// </summary>
public sealed class VmHost
{
    private readonly MachineModel _vm;
    private readonly IVcpu[] _vcpus;
    private readonly Action _resetMachine;
    private readonly bool _noReboot;
    private readonly TextWriter _err;
    private volatile bool _quitRequested;

    /// <param name="resetMachine">Puts devices and memory back to their boot state and reloads the guest (reboot).</param>
    public VmHost(MachineModel vm, IVcpu[] vcpus, Action resetMachine, bool noReboot, TextWriter err)
    {
        _vm = vm;
        _vcpus = vcpus;
        _resetMachine = resetMachine;
        _noReboot = noReboot;
        _err = err;
        vm.PowerEventRequested += _ => StopAll();
    }

    public int Reboots { get; private set; }

    /// <summary>Stops the VM from another thread (console escape, signal): Run returns <see cref="ExitCodes.Ok"/>.</summary>
    public void Quit()
    {
        _quitRequested = true;
        StopAll();
    }

    private void StopAll()
    {
        foreach (var v in _vcpus) v.RequestStop();
    }

    public int Run()
    {
        while (true)
        {
            var exits = new VcpuExit[_vcpus.Length];
            var threads = new Thread[_vcpus.Length];
            int firstDone = -1;
            var done = new ManualResetEventSlim(false);
            for (int k = 0; k < _vcpus.Length; k++)
            {
                int idx = k;
                threads[k] = new Thread(() =>
                {
                    try { exits[idx] = _vcpus[idx].Run(); }
                    catch (Exception ex) { exits[idx] = new VcpuExit(VcpuExitReason.InternalError, ex.ToString()); }
                    Interlocked.CompareExchange(ref firstDone, idx, -1);
                    done.Set();
                }, 64 << 20) { IsBackground = true, Name = $"vcpu{idx}" };
                threads[k].Start();
            }
            done.Wait();
            StopAll();
            foreach (var t in threads) t.Join();
            var exit = exits[firstDone];

            if (_quitRequested) return ExitCodes.Ok;
            switch (exit.Reason)
            {
                case VcpuExitReason.PowerEvent:
                case VcpuExitReason.Stopped:
                    switch (_vm.PowerEvent)
                    {
                        case PowerEventKind.PowerOff:
                            return ExitCodes.Ok;
                        case PowerEventKind.DebugExit:
                            return _vm.ExitCode;
                        case PowerEventKind.Reset:
                            if (_noReboot) return ExitCodes.Ok;
                            Reboots++;
                            _vm.ClearPowerEvent();
                            _resetMachine();
                            continue;
                        default:
                            _err.WriteLine($"dirigent: vCPU {firstDone} stopped unexpectedly ({exit.Detail})");
                            return ExitCodes.VmmFailure;
                    }
                case VcpuExitReason.Shutdown:
                    _err.WriteLine($"dirigent: guest shut down: {exit.Detail}");
                    return ExitCodes.GuestDied;
                case VcpuExitReason.HaltedForever:
                    _err.WriteLine($"dirigent: guest halted with interrupts disabled and can never resume: {exit.Detail}");
                    return ExitCodes.GuestDied;
                default:
                    _err.WriteLine($"dirigent: VMM failure on vCPU {firstDone}: {exit.Detail}");
                    return ExitCodes.VmmFailure;
            }
        }
    }
}
