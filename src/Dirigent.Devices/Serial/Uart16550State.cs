using Dirigent.Machine.State;

namespace Dirigent.Devices.Serial;

/// <summary>A 16550A UART (<see cref="Uart16550"/>): registers, receive FIFO and pending interrupt sources.</summary>
public sealed record Uart16550State : ISavedState
{
    public static int FormatVersion => 1;
    public byte Ier, Lcr, Mcr, Scr;
    public ushort Divisor;
    /// <summary>FCR bit 0 and the receive trigger level it selected (1, 4, 8 or 14 bytes).</summary>
    public bool FifoEnabled;
    public byte RxTrigger;
    /// <summary>The receive FIFO (or holding register), oldest byte first: at most 16 bytes (1 without the FIFO).</summary>
    public byte[] RxFifo = [];
    /// <summary>Host input not yet taken into the receive FIFO (typed before the save), oldest first.</summary>
    public byte[] HostInput = [];
    /// <summary>LSR error bits (OE/PE/FE/BI) not yet read, and MSR delta bits not yet read.</summary>
    public byte LsrErrors, MsrDelta;
    /// <summary>
    /// THR-empty interrupt pending (not yet acknowledged by an IIR read or a THR write). Transmission is
    /// instantaneous, so THR and TSR are always empty: there is no transmit timing to carry.
    /// </summary>
    public bool ThrInterruptPending;
    /// <summary>Character-timeout interrupt pending, and VM ns since the receive FIFO was last read or filled.</summary>
    public bool TimeoutPending;
    public long NsSinceRxActivity;
}
