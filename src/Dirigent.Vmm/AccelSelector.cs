using System.Diagnostics;
using Dirigent.Accel.Emu;
using Dirigent.Accel.Kvm;
using Dirigent.Machine;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;

namespace Dirigent.Vmm;

/// <summary>
/// Chooses the accelerator. `auto` uses KVM only when it is present, usable and actually faster: it times the same
/// small calibration guest on KVM and on the software CPU and keeps the faster (a PVM host emulates every
/// instruction under KVM, so there the software CPU wins).
/// </summary>
public static class AccelSelector
{
    /// <summary>Iterations of the calibration loop (4 instructions each): quick even on an emulating KVM.</summary>
    public const int CalibrationIterations = 50_000;

    public static IAccelerator Create(VmSpec cfg, MachineModel vm, TextWriter err, out string? error)
    {
        error = null;
        switch (cfg.Accel)
        {
            case AccelKind.Emu:
                return new EmuAccelerator(vm);
            case AccelKind.Kvm:
                if (!KvmAccelerator.Probe(out string why))
                {
                    error = $"--accel kvm: {why}";
                    return null!;
                }
                return new KvmAccelerator(vm);
            default:
                if (!KvmAccelerator.Probe(out string reason))
                {
                    err.WriteLine($"accel: emu (kvm unavailable: {reason})");
                    return new EmuAccelerator(vm);
                }
                double kvm = TimeCalibration(v => new KvmAccelerator(v));
                double emu = TimeCalibration(v => new EmuAccelerator(v));
                if (kvm < emu)
                {
                    err.WriteLine($"accel: kvm (calibration guest: kvm {kvm * 1000:F1} ms, software CPU {emu * 1000:F1} ms)");
                    return new KvmAccelerator(vm);
                }
                err.WriteLine($"accel: emu (kvm is slower here: calibration guest took {kvm * 1000:F1} ms on kvm, {emu * 1000:F1} ms on the software CPU)");
                return new EmuAccelerator(vm);
        }
    }

    /// <summary>
    /// Runs a 64-bit integer loop (`mov ecx,N; L: add eax,ecx; dec ecx; jnz L; hlt`) and returns the wall time of
    /// the whole thing, VM creation included, since that too is part of what a user waits for. Best of two runs.
    /// </summary>
    public static double TimeCalibration(Func<MachineModel, IAccelerator> create)
    {
        byte[] code =
        [
            0xB9, unchecked((byte)CalibrationIterations), (byte)(CalibrationIterations >> 8), (byte)(CalibrationIterations >> 16), 0,
            0x01, 0xC8, // add eax, ecx
            0xFF, 0xC9, // dec ecx
            0x75, 0xFA, // jnz -6
            0xF4,       // hlt (IF=0: the run ends)
        ];
        double best = double.MaxValue;
        for (int k = 0; k < 2; k++)
        {
            var sw = Stopwatch.StartNew();
            using var vm = new MachineModel(2 << 20);
            using var accel = create(vm);
            const ulong entry = 0x10_0000;
            vm.Memory.Write(entry, code);
            var cpu = accel.CreateVcpu(0);
            cpu.SetState(BootState.Long64(vm.Memory, entry, 0x8_0000));
            var exit = cpu.Run();
            sw.Stop();
            if (exit.Reason != VcpuExitReason.HaltedForever) return double.MaxValue; // treat a misbehaving backend as unusable
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return best;
    }
}
