using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

/// <summary>SSSE3 forms on mm registers. State rules and checks: see <see cref="Mmx"/>.</summary>
internal static unsafe class MmxSsse3
{
    public static void Install(HandlerRegistry r)
    {
    }
}
