namespace Dirigent.Devices.Interrupts;

/// <summary>Delivery modes of IOAPIC redirection entries, LVT entries, the ICR and MSI data (SDM vol.3 11.6.1).</summary>
public enum ApicDeliveryMode
{
    Fixed = 0, LowestPriority = 1, Smi = 2, Nmi = 4, Init = 5, Startup = 6, ExtInt = 7,
}

/// <summary>ICR destination shorthand (bits 19:18).</summary>
public enum ApicShorthand { None = 0, Self = 1, AllIncludingSelf = 2, AllExcludingSelf = 3 }

/// <summary>
/// One interrupt message on the (virtual) APIC bus: an IPI, an IOAPIC redirection or an MSI. Delivery is
/// synchronous, so delivery-status bits never stay pending.
/// </summary>
public readonly record struct ApicMessage(
    byte Vector,
    ApicDeliveryMode Mode,
    bool LogicalDestination,
    byte Destination,
    bool LevelTriggered = false,
    bool Assert = true,
    ApicShorthand Shorthand = ApicShorthand.None);

/// <summary>The system side the local APICs talk to: other APICs (IPIs) and the IOAPICs (EOI broadcasts).</summary>
public interface IApicBus
{
    /// <summary>
    /// Delivers a message; <paramref name="source"/> is the sending local APIC (for shorthands) or null. Returns
    /// whether any local APIC accepted it.
    /// </summary>
    bool Deliver(in ApicMessage message, LocalApic? source);

    /// <summary>A local APIC retired a level-triggered vector: IOAPIC entries with that vector clear remote IRR.</summary>
    void BroadcastEoi(int vector);
}
