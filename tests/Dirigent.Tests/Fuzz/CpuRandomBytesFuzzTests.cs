using System.Runtime.Intrinsics.X86;
using Dirigent.Accel.Emu.Core;
using Dirigent.Accel.Emu.Jit;
using Dirigent.Machine.Accel;
using Dirigent.Machine.Loaders;
using Dirigent.Tests.Infrastructure;
using Dirigent.Tests.Native;
using Iced.Intel;
using Xunit.Abstractions;
using static Dirigent.Tests.SoftCpu.SystemTestKit;
using Decoder = Iced.Intel.Decoder;

namespace Dirigent.Tests.Fuzz;

/// <summary>
/// Random instruction bytes on the software CPU. Each case decodes one instruction from 15 random bytes (with Iced),
/// places it at the start of a user code page followed by HLT, and runs it at CPL 3 from random registers, on the
/// interpreter and on the compiled tier. At CPL 3 every outcome is observable and documented: the instruction
/// completes (then the HLT after it raises #GP(0) at the next address), or it raises an exception at itself. Every
/// vector goes through an IST gate to a ring-0 HLT of its own, so the vector, error code and pushed RIP are read
/// back from the IST stack. Checked: invalid encodings raise #UD (or #GP for over-long ones); privileged and I/O
/// instructions raise #GP (or #UD); INT n/INT3 through DPL-0 gates raise #GP(n*8+2); every other non-branch either
/// completes or faults with RIP at the instruction; both tiers agree on vector, error code, pushed RIP, CR2 and
/// registers; no host exception, no triple fault, no hang. The user can touch only its own pages (code read-only),
/// so one case cannot leave anything behind for the next and each case replays alone.
/// Unprivileged register-only instructions the software CPU completes are also run on the host CPU (the
/// differential harness in Native/) and must give the same registers, flags and FPU/SSE state.
/// 32- and 16-bit protected mode (CPL 3, segments confined to the user area) get the same checks except the host one.
/// </summary>
public sealed class CpuRandomBytesFuzzTests(ITestOutputHelper output)
{
    // Physical layout (identity-mapped). Below 4 MiB: supervisor only (page tables, GDT/IDT/TSS, handlers, IST).
    private const ulong Handlers = 0x23_0000, IstTop = 0x24_0000;
    private const ulong UserCode = 0x40_0000;                 // 2 MiB page, user, read-only
    private const ulong UserData = 0x60_0000, UserDataSize = 0x10_0000, UserStack = 0x6F_F000; // user, writable

    private sealed class Machine : IDisposable
    {
        public readonly TestVm Vm;
        public readonly int Bits;
        private readonly CpuState _start;

        public Machine(int bits, JitMode jit, int native = 0)
        {
            Bits = bits;
            Vm = new TestVm(jit: jit, native: native);
            var m = Vm.Vm.Memory;
            m.Write(Handlers, Enumerable.Repeat((byte)0xF4, 256).ToArray());
            if (bits == 64)
            {
                Setup64(Vm, UserCode, userPages: true);
                // The user may touch only its two 2 MiB pages: code (read-only) and data; everything else in the 4 GiB
                // identity map is supervisor-only, so a stray store cannot leave state behind for later cases.
                for (ulong k = 0; k < 4 * 512; k++)
                    if (k is not (2 or 3)) m.WriteU64(BootState.PdAddr + k * 8, m.ReadU64(BootState.PdAddr + k * 8) & ~4UL);
                m.WriteU64(BootState.PdAddr + 2 * 8, m.ReadU64(BootState.PdAddr + 2 * 8) & ~2UL);
                for (int v = 0; v < 256; v++) Gate64(Vm, v, Handlers + (ulong)v, dpl: 0, ist: 1);
                m.WriteU64(Tss + 0x24, IstTop);
                m.WriteU16(Tss + 0x66, 0x68);                  // I/O map base past the TSS limit: no port is allowed at CPL 3
                _start = Vm.Cpu.GetState();
                _start.Segments[(int)Seg.CS] = new SegmentState { Selector = U64, Limit = 0xFFFF_FFFF, Attributes = 0xA0FB };
                _start.Segments[(int)Seg.SS] = new SegmentState { Selector = UData, Limit = 0xFFFF_FFFF, Attributes = 0xC0F3 };
            }
            else
            {
                Setup32(Vm, UserCode);
                // User code and data segments confined to the user area (no paging here: limits do the confining).
                ulong codeFlags = bits == 32 ? 0x4UL : 0;
                W64(Vm, Gdt + 0x18, Desc(UserCode, 0xFFFF, 0xFB, codeFlags));
                W64(Vm, Gdt + 0x20, Desc(UserData, (uint)UserDataSize - 1, 0xF3, 0x4));
                for (int v = 0; v < 256; v++) Gate32(Vm, v, Handlers + (ulong)v, P32Code);
                m.WriteU64(Tss + 4, IstTop);                   // ESP0
                m.WriteU64(Tss + 8, P32Data);                  // SS0
                m.WriteU16(Tss + 0x66, 0x68);                  // I/O map base past the TSS limit
                _start = Vm.Cpu.GetState();
                _start.Segments[(int)Seg.CS] = new SegmentState { Selector = P32UCode, Base = UserCode, Limit = 0xFFFF, Attributes = (ushort)(bits == 32 ? 0x40FB : 0x00FB) };
                var data = new SegmentState { Selector = P32UData, Base = UserData, Limit = (uint)UserDataSize - 1, Attributes = 0x40F3 };
                foreach (var s in new[] { Seg.SS, Seg.DS, Seg.ES }) _start.Segments[(int)s] = data;
                _start.Segments[(int)Seg.FS] = _start.Segments[(int)Seg.GS] = default;
            }
        }

        public void Dispose() => Vm.Dispose();

        /// <summary>What a case ended with: the vector taken, its error code, the pushed RIP, CR2, and the registers.</summary>
        public readonly record struct Outcome(int Vector, ulong Error, ulong PushedIp, ulong Cr2, ulong[] Gpr)
        {
            public override string ToString() => $"vector {Vector} error 0x{Error:x} at 0x{PushedIp:x} cr2 0x{Cr2:x}";
        }

        public Outcome Run(byte[] code, ulong[] gpr, ulong rflags, byte[] fx, bool singleStep)
        {
            var m = Vm.Vm.Memory;
            // The user area back to its initial contents: the code then HLTs, zeroed data and stack.
            var page = new byte[0x1000];
            Array.Fill(page, (byte)0xF4);
            code.CopyTo(page, 0);
            m.Write(UserCode, page);
            m.Write(UserData, new byte[UserDataSize]);
            var s = _start.Clone();
            s.Rip = Bits == 64 ? UserCode : 0;
            for (int k = 0; k < 16; k++) s.Gpr[k] = Bits == 64 || k < 8 ? gpr[k] : 0;
            s.Gpr[4] = Bits == 64 ? UserStack : UserStack - UserData;
            s.Rflags = (rflags & 0xCD5) | 2 | (singleStep ? 0x100UL : 0);
            s.Fxsave = (byte[])fx.Clone();
            Vm.Cpu.SetState(s);
            Vm.Log.Clear();
            var exit = Vm.Run(60_000);
            ulong rip = Vm.Cpu.Rip;
            if (exit.Reason != VcpuExitReason.HaltedForever || rip <= Handlers || rip > Handlers + 256)
                throw new Xunit.Sdk.XunitException($"did not end in an exception handler: {exit.Reason} {exit.Detail} RIP=0x{rip:x} log={string.Join(";", Vm.Log)}");
            int vector = (int)(rip - Handlers - 1);
            bool hasError = vector is 8 or 10 or 11 or 12 or 13 or 14 or 17 or 21;
            int w = Bits == 64 ? 8 : 4;
            ulong Stack(int slot) => w == 8 ? m.ReadU64(IstTop - (ulong)(8 * slot)) : m.ReadU64(IstTop - (ulong)(4 * slot)) & 0xFFFF_FFFF;
            // 64-bit frame: SS, RSP, RFLAGS, CS, RIP, [error]; 32-bit from CPL 3: SS, ESP, EFLAGS, CS, EIP, [error].
            var g = (ulong[])Vm.Cpu.Gpr.Clone();
            g[4] = 0;
            return new Outcome(vector, hasError ? Stack(6) : 0, Stack(5), Vm.Cpu.Cr2, g);
        }
    }

    [Fact] public void Mode64() => Fuzz(64, 2000);
    [Fact] public void Mode32() => Fuzz(32, 1500);
    [Fact] public void Mode16() => Fuzz(16, 1500);

    private void Fuzz(int bits, long ciCases, [System.Runtime.CompilerServices.CallerMemberName] string test = "")
    {
        using var interp = new Machine(bits, JitMode.Off);
        using var jit = new Machine(bits, JitMode.Always);
        using var nat = new Machine(bits, JitMode.Off, native: 1);
        using var diff = bits == 64 && NativeRunner.Supported ? new Differential() : null;
        var counts = new Dictionary<string, int>();
        void Count(string k) => counts[k] = counts.GetValueOrDefault(k) + 1;
        FuzzBudget.Run(GetType(), output, ciCases, (i, rnd) =>
        {
            var bytes = new byte[15];
            rnd.NextBytes(bytes);
            // Bias towards real opcode space: common prefixes and the 0F escape.
            if (rnd.Next(3) == 0) bytes[0] = new byte[] { 0x0F, 0x66, 0xF3, 0xF2, 0x48, 0x4C, 0xF0 }[rnd.Next(7)];
            if (bytes[0] is 0x66 or 0xF3 or 0xF2 or 0x48 && rnd.Next(2) == 0) bytes[1] = 0x0F;
            var dec = Decoder.Create(bits, bytes);
            dec.IP = bits == 64 ? UserCode : 0;
            dec.Decode(out var ins);
            bool valid = ins.Code != Code.INVALID;
            byte[] code = valid ? bytes[..ins.Length] : bytes;
            var st = Differential.RandomState(rnd);
            // Some registers point into the user data area (so memory operands land in RAM the user may touch),
            // and counts stay small (so REP strings and LOOPs end in a reasonable number of steps).
            for (int k = 0; k < 16; k++)
                if (rnd.Next(3) == 0) st.Gpr[k] = (bits == 64 ? UserData : 0) + (ulong)rnd.Next((int)UserDataSize - 0x1000);
            st.Gpr[1] &= 0xFFF;
            // Branches run with TF set, so that the #DB trap after them ends the case wherever they went: a taken
            // "jle $" or "jmp eax" to itself would otherwise loop for ever, as it would on hardware.
            var flow = ins.FlowControl;
            bool branch = valid && flow is not (FlowControl.Next or FlowControl.Interrupt or FlowControl.Exception);
            string what = $"{(valid ? ins.ToString() : "invalid")} [{Convert.ToHexString(code)}] in {bits}-bit mode";
            Machine.Outcome a, b, c;
            try
            {
                a = interp.Run(code, st.Gpr, st.Rflags, st.Fx, branch);
                b = jit.Run(code, st.Gpr, st.Rflags, st.Fx, branch);
                c = nat.Run(code, st.Gpr, st.Rflags, st.Fx, branch);
            }
            catch (Exception e) { throw new Xunit.Sdk.XunitException($"{what}: {e.GetType().Name}: {e.Message}"); }
            FuzzBudget.Check(a.Vector != 8, $"{what}: double fault ({a})");
            FuzzBudget.Check(a.Vector == b.Vector && a.Error == b.Error && a.PushedIp == b.PushedIp && (a.Vector != 14 || a.Cr2 == b.Cr2),
                $"{what}: interpreter {a}, compiled tier {b}");
            // The time stamp counter and random numbers legitimately differ between two runs.
            bool machineSpecific = ins.Mnemonic is Mnemonic.Rdtsc or Mnemonic.Rdtscp or Mnemonic.Rdrand or Mnemonic.Rdseed or Mnemonic.Rdpmc;
            FuzzBudget.Check(a.Vector == c.Vector && a.Error == c.Error && a.PushedIp == c.PushedIp && (a.Vector != 14 || a.Cr2 == c.Cr2),
                $"{what}: interpreter {a}, native tier {c}");
            for (int k = 0; k < 16 && !machineSpecific; k++)
            {
                FuzzBudget.Check(a.Gpr[k] == b.Gpr[k], $"{what}: r{k} interpreter 0x{a.Gpr[k]:x}, compiled tier 0x{b.Gpr[k]:x}");
                FuzzBudget.Check(a.Gpr[k] == c.Gpr[k], $"{what}: r{k} interpreter 0x{a.Gpr[k]:x}, native tier 0x{c.Gpr[k]:x}");
            }
            ulong start = bits == 64 ? UserCode : 0, next = start + (ulong)ins.Length;
            bool completed = a.Vector == 13 && a.Error == 0 && a.PushedIp == next && valid;
            bool faultedHere = a.PushedIp == start;
            if (!valid)
            {
                Count("invalid");
                FuzzBudget.Check(faultedHere && a.Vector is 6 or 13, $"{what}: expected #UD at the instruction, got {a}");
            }
            else if (ins.IsPrivileged || ins.Mnemonic is Mnemonic.Cli or Mnemonic.Sti || ins.OpCode.IsInputOutput)
            {
                Count("privileged/io");
                // REP INS/OUTS with a zero count does nothing, permission check included.
                bool repIo = ins.OpCode.IsInputOutput && (ins.HasRepPrefix || ins.HasRepnePrefix) && completed;
                FuzzBudget.Check(faultedHere && a.Vector is 13 or 6 || repIo, $"{what}: expected #GP at the instruction at CPL 3, got {a}");
            }
            else if (ins.Mnemonic is Mnemonic.Int or Mnemonic.Int3 or Mnemonic.Into)
            {
                Count("int");
                int v = ins.Mnemonic == Mnemonic.Int ? ins.Immediate8 : ins.Mnemonic == Mnemonic.Int3 ? 3 : 4;
                bool overflowClear = ins.Mnemonic == Mnemonic.Into && (st.Rflags & 0x800) == 0;
                FuzzBudget.Check(overflowClear ? completed : faultedHere && a.Vector == 13 && a.Error == (ulong)(v * 8 + 2),
                    $"{what}: expected #GP(0x{v * 8 + 2:x}) through a DPL-0 gate, got {a}");
            }
            else if (flow == FlowControl.Next)
            {
                Count(completed ? "completed" : "faulted");
                FuzzBudget.Check(completed || faultedHere, $"{what}: neither completed nor faulted at the instruction: {a}");
                if (completed && diff != null && HostSafe(ins))
                {
                    Count("host-compared");
                    string d = diff.Compare(code, st);
                    FuzzBudget.Check(d == "", $"{what}: differs from the host CPU: {d}");
                }
            }
            else Count("branch");
        }, test);
        output.WriteLine(string.Join(", ", counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key} {kv.Value}")));
    }

    // ---------------- what may run on the host ----------------

    private static readonly HashSet<CpuidFeature> HostFeatures = BuildHostFeatures();

    private static HashSet<CpuidFeature> BuildHostFeatures()
    {
        var s = new HashSet<CpuidFeature>
        {
            CpuidFeature.INTEL8086, CpuidFeature.INTEL186, CpuidFeature.INTEL286, CpuidFeature.INTEL386, CpuidFeature.INTEL486,
            CpuidFeature.X64, CpuidFeature.CMOV, CpuidFeature.SSE, CpuidFeature.SSE2, CpuidFeature.MMX, CpuidFeature.FPU,
            CpuidFeature.FPU387,
        };
        if (Sse3.IsSupported) s.Add(CpuidFeature.SSE3);
        if (Ssse3.IsSupported) s.Add(CpuidFeature.SSSE3);
        if (Sse41.IsSupported) s.Add(CpuidFeature.SSE4_1);
        if (Sse42.IsSupported) s.Add(CpuidFeature.SSE4_2);
        if (Popcnt.IsSupported) s.Add(CpuidFeature.POPCNT);
        if (Lzcnt.IsSupported) s.Add(CpuidFeature.LZCNT);
        return s;
    }

    /// <summary>
    /// Instructions that can run on the host inside the differential stub without harming the test process or
    /// giving legitimately different answers: implemented by the software CPU, register-only (no memory, stack,
    /// segment or flow effects), not privileged or IOPL-sensitive, not able to fault (no DIV), not
    /// machine-specific (CPUID, RDTSC, RDRAND...), with results the SDM defines (no SHLD/SHRD counts past the
    /// width, no x87 transcendentals whose last bit may differ).
    /// </summary>
    private static bool HostSafe(in Instruction ins)
    {
        if (!Dispatch.IsImplemented(ins.Code)) return false;
        foreach (var f in ins.CpuidFeatures) if (!HostFeatures.Contains(f)) return false;
        if (ins.IsStackInstruction || ins.IsPrivileged || ins.OpCode.IsInputOutput) return false;
        for (int k = 0; k < ins.OpCount; k++)
        {
            var kind = ins.GetOpKind(k);
            if (kind.ToString().StartsWith("Memory", StringComparison.Ordinal)) return false;
            if (kind == OpKind.Register && (ins.GetOpRegister(k).IsSegmentRegister() || ins.GetOpRegister(k) is Register.RSP or Register.ESP or Register.SP or Register.SPL))
                return false;
        }
        var info = new InstructionInfoFactory().GetInfo(ins);
        if (info.GetUsedMemory().Any()) return false;
        foreach (var r in info.GetUsedRegisters()) if (r.Register is Register.RSP or Register.ESP or Register.SP or Register.SPL) return false;
        return ins.Mnemonic is not (Mnemonic.Div or Mnemonic.Idiv or Mnemonic.Cli or Mnemonic.Sti or Mnemonic.Hlt or Mnemonic.Lar
            or Mnemonic.Lsl or Mnemonic.Verr or Mnemonic.Verw or Mnemonic.Sldt or Mnemonic.Str or Mnemonic.Smsw or Mnemonic.Shld
            or Mnemonic.Shrd or Mnemonic.F2xm1 or Mnemonic.Fsin or Mnemonic.Fcos or Mnemonic.Fsincos or Mnemonic.Fptan
            or Mnemonic.Fpatan or Mnemonic.Fyl2x or Mnemonic.Fyl2xp1 or Mnemonic.Fprem or Mnemonic.Fprem1 or Mnemonic.Fscale
            or Mnemonic.Frndint or Mnemonic.Fsqrt or Mnemonic.Fxtract or Mnemonic.Cpuid or Mnemonic.Rdtsc or Mnemonic.Rdtscp
            or Mnemonic.Rdpmc or Mnemonic.Rdrand or Mnemonic.Rdseed or Mnemonic.Rdpid or Mnemonic.Xgetbv or Mnemonic.Rdfsbase
            or Mnemonic.Rdgsbase or Mnemonic.Wrfsbase or Mnemonic.Wrgsbase or Mnemonic.Swapgs or Mnemonic.Pause
            // Approximations whose low bits the SDM leaves to the implementation.
            or Mnemonic.Rcpps or Mnemonic.Rcpss or Mnemonic.Rsqrtps or Mnemonic.Rsqrtss);
    }
}
