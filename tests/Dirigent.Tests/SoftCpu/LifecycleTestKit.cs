using Dirigent.Accel.Emu.Core;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Bus;
using Dirigent.Tests.Infrastructure;

namespace Dirigent.Tests.SoftCpu;

/// <summary>
/// MMIO helpers for save/restore and dirty-log guests. An MMIO store does not end a block (unlike OUT), so a guest can
/// ask to be stopped and still run the rest of its block: that is how it parks itself in HLT or in an STI shadow.
/// </summary>
internal static class LifecycleTestKit
{
    /// <summary>A store here asks <see cref="StopDevice.Target"/> to stop (Run returns Stopped at the next boundary).</summary>
    public const ulong StopAddr = 0xE000_0000;
    /// <summary>A store here counts a tick (<see cref="TickDevice"/>).</summary>
    public const ulong TickAddr = 0xE000_1000;
    /// <summary>A store here blocks the vCPU thread until the test opens the gate (<see cref="GateDevice"/>).</summary>
    public const ulong GateAddr = 0xE000_2000;

    public sealed class StopDevice : IMmioDevice
    {
        public Cpu? Target;
        public ulong Read(ulong offset, int size) => 0;
        public void Write(ulong offset, int size, ulong value) => Target?.RequestStop();
    }

    public sealed class TickDevice : IMmioDevice
    {
        private long _ticks;
        public long Ticks { get { lock (this) return _ticks; } }
        public ulong Read(ulong offset, int size) => 0;
        public void Write(ulong offset, int size, ulong value)
        {
            lock (this) { _ticks++; Monitor.PulseAll(this); }
        }

        /// <summary>Waits until at least n ticks were counted (the timeout is only a watchdog).</summary>
        public void WaitFor(long n)
        {
            lock (this)
                while (_ticks < n)
                    if (!Monitor.Wait(this, 10_000)) throw new TimeoutException($"guest did not reach tick {n} (at {_ticks})");
        }
    }

    public sealed class GateDevice : IMmioDevice
    {
        public readonly ManualResetEventSlim Entered = new(false), Open = new(false);
        public ulong Read(ulong offset, int size) => 0;
        public void Write(ulong offset, int size, ulong value)
        {
            Entered.Set();
            // No throw on the vCPU thread (it would take the test host down): a test that fails opens the gate.
            Open.Wait(10_000);
        }
    }

    public static StopDevice AddStop(TestVm vm)
    {
        var d = new StopDevice { Target = vm.Cpu };
        vm.Vm.Mmio.Register(StopAddr, 0x1000, d);
        return d;
    }

    /// <summary>Runs a vCPU on its own thread (a big stack, as TestVm does) with a watchdog.</summary>
    public static VcpuExit RunOn(Cpu cpu, int timeoutMs = 10_000)
    {
        var t = StartOn(cpu, out var result);
        return Join(cpu, t, result, timeoutMs);
    }

    public static Thread StartOn(Cpu cpu, out VcpuExit[] result)
    {
        var r = new VcpuExit[1];
        result = r;
        var t = new Thread(() => r[0] = cpu.Run(), 16 << 20) { IsBackground = true };
        t.Start();
        return t;
    }

    public static VcpuExit Join(Cpu cpu, Thread t, VcpuExit[] result, int timeoutMs = 10_000)
    {
        if (!t.Join(timeoutMs))
        {
            cpu.RequestStop();
            t.Join(5000);
            throw new TimeoutException($"vCPU ran longer than {timeoutMs} ms; RIP={cpu.Rip:x}");
        }
        return result[0];
    }

    /// <summary>For finally blocks: stops a vCPU a failed test left running, so it outlives none of the test's objects.</summary>
    public static void StopAndJoin(Cpu cpu, Thread t)
    {
        cpu.RequestStop();
        t.Join(10_000);
        cpu.OnIdle = null;
    }

    /// <summary>Waits for an event the guest's progress sets; the timeout is only a watchdog.</summary>
    public static void Await(ManualResetEventSlim e, string what) => Assert.True(e.Wait(10_000), $"timed out waiting for {what}");
}
