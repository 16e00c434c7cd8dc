namespace Dirigent.Accel.Emu.Jit;

/// <summary>How the software CPU uses its compiled tier (see README "The software CPU: compiled tier").</summary>
public enum JitMode
{
    /// <summary>Interpreter only (DIRIGENT_JIT=0).</summary>
    Off,
    /// <summary>Blocks start in the interpreter; hot 64-bit blocks are compiled on a background thread (the default).</summary>
    On,
    /// <summary>Every 64-bit block is compiled when it is first decoded, on the vCPU's thread (tests: DIRIGENT_JIT=always).</summary>
    Always,
}

public static class JitSettings
{
    /// <summary>DIRIGENT_JIT: 0/off → Off, always/force → Always, anything else (or unset) → On.</summary>
    public static JitMode FromEnvironment()
    {
        string? v = Environment.GetEnvironmentVariable("DIRIGENT_JIT")?.Trim().ToLowerInvariant();
        return v switch
        {
            "0" or "off" or "false" or "no" => JitMode.Off,
            "always" or "force" => JitMode.Always,
            _ => JitMode.On,
        };
    }
}
