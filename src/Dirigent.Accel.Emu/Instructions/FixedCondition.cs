using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>A condition code as a type, so a generic handler instantiated with it tests a constant condition.</summary>
internal interface ICc { static abstract ConditionCode Cc { get; } }

/// <summary>Picks the handler instantiation for condition <typeparamref name="T"/> (null: no fast handler).</summary>
internal unsafe interface IConditionHandlerPicker
{
    static abstract delegate*<Cpu, ref Instruction, void> Pick<T>(ref Instruction i) where T : struct, ICc;
}

/// <summary>
/// Maps a run-time condition code to the handler instantiated for it: one instantiation per condition, so each
/// handler tests a constant condition (no shared switch whose indirect jump would mispredict across the many
/// branch sites).
/// </summary>
internal static unsafe class FixedCondition
{
    public static delegate*<Cpu, ref Instruction, void> Select<TPicker>(ConditionCode cc, ref Instruction i)
        where TPicker : IConditionHandlerPicker => cc switch
    {
        ConditionCode.o => TPicker.Pick<CcO>(ref i),
        ConditionCode.no => TPicker.Pick<CcNo>(ref i),
        ConditionCode.b => TPicker.Pick<CcB>(ref i),
        ConditionCode.ae => TPicker.Pick<CcAe>(ref i),
        ConditionCode.e => TPicker.Pick<CcE>(ref i),
        ConditionCode.ne => TPicker.Pick<CcNe>(ref i),
        ConditionCode.be => TPicker.Pick<CcBe>(ref i),
        ConditionCode.a => TPicker.Pick<CcA>(ref i),
        ConditionCode.s => TPicker.Pick<CcS>(ref i),
        ConditionCode.ns => TPicker.Pick<CcNs>(ref i),
        ConditionCode.p => TPicker.Pick<CcP>(ref i),
        ConditionCode.np => TPicker.Pick<CcNp>(ref i),
        ConditionCode.l => TPicker.Pick<CcL>(ref i),
        ConditionCode.ge => TPicker.Pick<CcGe>(ref i),
        ConditionCode.le => TPicker.Pick<CcLe>(ref i),
        ConditionCode.g => TPicker.Pick<CcG>(ref i),
        _ => null,
    };

    private struct CcO : ICc { public static ConditionCode Cc => ConditionCode.o; }
    private struct CcNo : ICc { public static ConditionCode Cc => ConditionCode.no; }
    private struct CcB : ICc { public static ConditionCode Cc => ConditionCode.b; }
    private struct CcAe : ICc { public static ConditionCode Cc => ConditionCode.ae; }
    private struct CcE : ICc { public static ConditionCode Cc => ConditionCode.e; }
    private struct CcNe : ICc { public static ConditionCode Cc => ConditionCode.ne; }
    private struct CcBe : ICc { public static ConditionCode Cc => ConditionCode.be; }
    private struct CcA : ICc { public static ConditionCode Cc => ConditionCode.a; }
    private struct CcS : ICc { public static ConditionCode Cc => ConditionCode.s; }
    private struct CcNs : ICc { public static ConditionCode Cc => ConditionCode.ns; }
    private struct CcP : ICc { public static ConditionCode Cc => ConditionCode.p; }
    private struct CcNp : ICc { public static ConditionCode Cc => ConditionCode.np; }
    private struct CcL : ICc { public static ConditionCode Cc => ConditionCode.l; }
    private struct CcGe : ICc { public static ConditionCode Cc => ConditionCode.ge; }
    private struct CcLe : ICc { public static ConditionCode Cc => ConditionCode.le; }
    private struct CcG : ICc { public static ConditionCode Cc => ConditionCode.g; }
}
