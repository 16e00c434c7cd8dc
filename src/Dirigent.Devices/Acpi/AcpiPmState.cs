using Dirigent.Machine.State;

namespace Dirigent.Devices.Acpi;

/// <summary>The ACPI PM1a/GPE0 registers (<see cref="AcpiPm"/>). The PM timer is VM time itself and is not saved.</summary>
public sealed record AcpiPmState : ISavedState
{
    public static int FormatVersion => 1;
    public ushort Pm1Status, Pm1Enable, Pm1Control;
    public uint Gpe0Status, Gpe0Enable;
    /// <summary>PM timer bit-23 transitions already reported through TMR_STS (the timer's value / 2^23 at that point).</summary>
    public long TimerMsbToggles;
}
