using Iced.Intel;
using Dirigent.Accel.Emu.Instructions;

namespace Dirigent.Accel.Emu.Core;

/// <summary>
/// The handler for every Iced <see cref="Code"/>, filled once by each instruction group's Register method.
/// Codes nobody registered raise #UD (logged once per code), so an unimplemented instruction is a guest-visible
/// fault, never a host exception.
/// </summary>
internal static unsafe class Dispatch
{
    public static readonly delegate*<Cpu, ref Instruction, void>[] Table;
    /// <summary>Instructions after which decoding stops even though FlowControl says Next (mode changes, HLT, ...).</summary>
    public static readonly bool[] EndsBlock;
    private static readonly int[] s_loggedUd = new int[IcedCounts.Codes];

    static Dispatch()
    {
        Table = new delegate*<Cpu, ref Instruction, void>[IcedCounts.Codes];
        EndsBlock = new bool[IcedCounts.Codes];
        Implemented = new bool[IcedCounts.Codes];
        for (int k = 0; k < Table.Length; k++) Table[k] = &Undefined;
        var r = new HandlerRegistry(Table, EndsBlock, Implemented);
        IntegerAlu.Install(r);
        IntegerData.Install(r);
        IntegerShift.Install(r);
        IntegerMulDiv.Install(r);
        IntegerBit.Install(r);
        IntegerString.Install(r);
        IntegerStack.Install(r);
        IntegerMisc.Install(r);
        ControlFlow.Install(r);
        ControlFlowFar.Install(r);
        SystemInstructions.Install(r);
        SystemRegisters.Install(r);
        SystemMsr.Install(r);
        SystemCalls.Install(r);
        Virtualization.Install(r);
        SegmentInstructions.Install(r);
        Sse.Install(r);
        X87.Install(r);
        Mmx.Install(r);
    }

    public static bool IsImplemented(Code c) => Implemented[(int)c];
    public static readonly bool[] Implemented;

    private static void Undefined(Cpu cpu, ref Instruction i)
    {
        if (Interlocked.Exchange(ref s_loggedUd[(int)i.Code], 1) == 0)
            cpu.LogOnce($"#UD: unimplemented or invalid instruction {i.Code} ({i}) at {cpu.Sreg[Cpu.CS].Selector:x4}:{cpu.InstrIp:x}");
        throw new CpuException(Vec.UD);
    }
}

/// <summary>What an instruction group's Register method fills.</summary>
public sealed unsafe class HandlerRegistry
{
    private readonly delegate*<Cpu, ref Instruction, void>[] _table;
    private readonly bool[] _ends, _implemented;

    internal HandlerRegistry(delegate*<Cpu, ref Instruction, void>[] table, bool[] ends, bool[] implemented)
    {
        _table = table;
        _ends = ends;
        _implemented = implemented;
    }

    /// <summary>Sets the handler of one or more codes. endsBlock: decoding stops after it (it changes mode/paging).</summary>
    public void Add(delegate*<Cpu, ref Instruction, void> handler, params Code[] codes) => Add(handler, false, codes);

    public void Add(delegate*<Cpu, ref Instruction, void> handler, bool endsBlock, params Code[] codes)
    {
        foreach (var c in codes)
        {
            _table[(int)c] = handler;
            _implemented[(int)c] = true;
            if (endsBlock) _ends[(int)c] = true;
        }
    }
}

internal static class IcedCounts
{
    public static readonly int Codes = Enum.GetValues<Code>().Length;
    public static readonly int Registers = Enum.GetValues<Register>().Length;
    public static readonly int MemorySizes = Enum.GetValues<MemorySize>().Length;
}
