using Dirigent.Cli;
using Dirigent.Images;
using Dirigent.Vmm;

namespace Dirigent.Tests.Infrastructure;

/// <summary>The default guest (Debian's kernel, the busybox initramfs) on the software CPU, running a test's script.</summary>
public static class DefaultGuestSpec
{
    public static VmSpec For(GuestImage img, string script, ulong memoryBytes = 256UL << 20) => new()
    {
        Kernel = img.Kernel,
        Initrds = [img.Initramfs],
        Append = $"{VmLauncher.DefaultAppend} {InitScript.CommandArgument(script)}",
        MemoryBytes = memoryBytes,
        Accel = Dirigent.Vmm.AccelKind.Emu,
    };
}
