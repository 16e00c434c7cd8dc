namespace Dirigent.Accel.Emu.Core;

/// <summary>Architectural exception vectors (Intel SDM vol. 3, table 6-1).</summary>
public static class Vec
{
    public const int DE = 0, DB = 1, NMI = 2, BP = 3, OF = 4, BR = 5, UD = 6, NM = 7, DF = 8,
        TS = 10, NP = 11, SS = 12, GP = 13, PF = 14, MF = 16, AC = 17, MC = 18, XM = 19;

    public static bool HasErrorCode(int v) => v is DF or TS or NP or SS or GP or PF or AC;
}

/// <summary>
/// A guest-visible fault raised while executing an instruction. It unwinds to the run loop, which delivers it through
/// the guest's IDT with RIP rolled back to the faulting instruction. It never escapes the vCPU.
/// </summary>
public sealed class CpuException : Exception
{
    public int Vector { get; }
    public uint ErrorCode { get; }
    public bool HasErrorCode { get; }

    public CpuException(int vector, uint errorCode = 0)
        : base(null, null)
    {
        Vector = vector;
        ErrorCode = errorCode;
        HasErrorCode = Vec.HasErrorCode(vector);
    }

    public override string Message => HasErrorCode ? $"#{Name(Vector)}({ErrorCode:x})" : $"#{Name(Vector)}";

    public static string Name(int v) => v switch
    {
        0 => "DE", 1 => "DB", 2 => "NMI", 3 => "BP", 4 => "OF", 5 => "BR", 6 => "UD", 7 => "NM", 8 => "DF",
        10 => "TS", 11 => "NP", 12 => "SS", 13 => "GP", 14 => "PF", 16 => "MF", 17 => "AC", 18 => "MC", 19 => "XM",
        _ => $"V{v}",
    };
}
