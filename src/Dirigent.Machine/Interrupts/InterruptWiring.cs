namespace Dirigent.Machine.Interrupts;

/// <summary>Input <see cref="Pin"/> (0..7) of 8259 <see cref="Chip"/> (0: master, 1: slave).</summary>
public readonly record struct PicInput(int Chip, int Pin);

/// <summary>Where one interrupt line is wired: a PIC input, an IOAPIC pin, both, or neither.</summary>
public readonly record struct LineWiring(PicInput? Pic, int? IoApicPin)
{
    public bool Connected => Pic != null || IoApicPin != null;
}

/// <summary>
/// The board's interrupt wiring, defined once: for each interrupt line a device can be given (the numbers of
/// <see cref="IInterruptSink.Line"/>: ISA IRQ 0..15, then GSI 16..23 — also KVM's GSI numbering for KVM_IRQ_LINE),
/// which 8259 input and which IOAPIC pin it reaches. Interrupt controllers the accelerator models (KVM's
/// KVM_SET_GSI_ROUTING) are programmed from it, so they agree with the MADT and MP table the firmware tables give.
/// </summary>
public sealed record InterruptWiring
{
    public const int LineCount = 24;

    /// <summary>Indexed by line number, <see cref="LineCount"/> entries.</summary>
    public IReadOnlyList<LineWiring> Lines { get; }

    public InterruptWiring(IReadOnlyList<LineWiring> lines)
    {
        if (lines.Count != LineCount) throw new ArgumentException($"{lines.Count} lines, expected {LineCount}", nameof(lines));
        for (int i = 0; i < lines.Count; i++)
        {
            var l = lines[i];
            if (l.Pic is { } p && (p.Chip is < 0 or > 1 || p.Pin is < 0 or > 7))
                throw new ArgumentException($"line {i}: no 8259 input {p.Chip}/{p.Pin}", nameof(lines));
            if (l.IoApicPin is < 0 or >= LineCount)
                throw new ArgumentException($"line {i}: no IOAPIC pin {l.IoApicPin}", nameof(lines));
        }
        Lines = lines.ToArray();
    }

    public LineWiring this[int line] => Lines[line];

    /// <summary>
    /// The PC's wiring as our MADT (with its interrupt source override) and MP table announce it, as on QEMU's PC:
    /// ISA IRQ 0 (the PIT) on master input 0 and IOAPIC pin 2; IRQ 2, the cascade, on neither (the slave's output
    /// drives master input 2 inside the pair); IRQs 1 and 3..15 on their 8259 input and the IOAPIC pin of the same
    /// number; lines 16..23 (PCI) on the IOAPIC only.
    /// </summary>
    public static InterruptWiring Pc { get; } = new(Enumerable.Range(0, LineCount).Select(n => n switch
    {
        0 => new LineWiring(new PicInput(0, 0), 2),
        2 => new LineWiring(null, null),
        < 16 => new LineWiring(new PicInput(n >> 3, n & 7), n),
        _ => new LineWiring(null, n),
    }).ToArray());
}
