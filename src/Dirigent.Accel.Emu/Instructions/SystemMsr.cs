using Dirigent.Accel.Emu.Core;
using Iced.Intel;

namespace Dirigent.Accel.Emu.Instructions;

internal static unsafe class SystemMsr
{
    public static void Install(HandlerRegistry r)
    {
    }
}
