using Dirigent.Machine.State;

namespace Dirigent.Devices.Serial;

// Reset, save and restore.
public sealed partial class Uart16550
{
    /// <summary>Upper bound for restored host input (bytes typed ahead of the guest).</summary>
    private const int MaxHostInput = 1 << 20;

    /// <summary>
    /// Power-on state: registers cleared (9600 baud divisor), FIFOs off and empty, no interrupt pending, IRQ low.
    /// Host input still waiting in the host-side queue is kept: it was typed at the console, not into the UART.
    /// </summary>
    public void Reset()
    {
        lock (_lock)
        {
            _ier = 0; _lcr = 0; _mcr = 0; _scr = 0;
            _divisor = 12;
            _fifoEnabled = false;
            _rxTrigger = 1;
            _rxFifo.Clear();
            _lsrErrors = 0;
            _msrDelta = 0;
            _msrInputs = HostModemInputs;
            _thrIPending = false;
            _timeoutPending = false;
            _lastRxActivityNs = 0;
            RefillFromHost();
            ArmTimeout();
            UpdateIrq();
        }
    }

    public Uart16550State Save()
    {
        lock (_lock)
        {
            return new Uart16550State
            {
                Ier = _ier, Lcr = _lcr, Mcr = _mcr, Scr = _scr,
                Divisor = _divisor,
                FifoEnabled = _fifoEnabled,
                RxTrigger = (byte)_rxTrigger,
                RxFifo = _rxFifo.ToArray(),
                HostInput = _hostInput.ToArray(),
                LsrErrors = _lsrErrors,
                MsrDelta = _msrDelta,
                ThrInterruptPending = _thrIPending,
                TimeoutPending = _timeoutPending,
                NsSinceRxActivity = Math.Max(0, _clock.NowNs - _lastRxActivityNs),
            };
        }
    }

    public void Restore(Uart16550State s)
    {
        if (s.RxFifo == null || s.HostInput == null) throw new StateRestoreException("uart: FIFO contents missing");
        if (s.RxTrigger is not (1 or 4 or 8 or 14)) throw new StateRestoreException($"uart: receive trigger level {s.RxTrigger}");
        if (!s.FifoEnabled && s.RxTrigger != 1) throw new StateRestoreException("uart: trigger level set with the FIFO off");
        int capacity = s.FifoEnabled ? FifoSize : 1;
        if (s.RxFifo.Length > capacity)
            throw new StateRestoreException($"uart: {s.RxFifo.Length} bytes in a {capacity}-byte receive FIFO");
        if (s.HostInput.Length > MaxHostInput) throw new StateRestoreException($"uart: {s.HostInput.Length} bytes of host input");
        if ((s.Ier & ~0x0F) != 0 || (s.Mcr & ~0x1F) != 0 || (s.LsrErrors & ~LsrErrorBits) != 0 || (s.MsrDelta & ~0x0F) != 0)
            throw new StateRestoreException("uart: IER, MCR, LSR or MSR holds bits the 16550A never sets");
        if (s.NsSinceRxActivity < 0 || s.NsSinceRxActivity > 1_000_000_000_000_000_000)
            throw new StateRestoreException($"uart: receive activity {s.NsSinceRxActivity} ns ago out of range");
        lock (_lock)
        {
            _ier = s.Ier; _lcr = s.Lcr; _scr = s.Scr;
            _divisor = s.Divisor;
            _fifoEnabled = s.FifoEnabled;
            _rxTrigger = s.RxTrigger;
            _rxFifo.Clear();
            foreach (byte b in s.RxFifo) _rxFifo.Enqueue(b);
            _hostInput.Clear();
            foreach (byte b in s.HostInput) _hostInput.Enqueue(b);
            _lsrErrors = s.LsrErrors;
            _mcr = s.Mcr;
            // The modem status inputs follow from MCR: the host's lines, or MCR's outputs in loopback.
            _msrInputs = Loopback
                ? (byte)(((_mcr & McrRts) != 0 ? MsrCts : 0) | ((_mcr & McrDtr) != 0 ? MsrDsr : 0) |
                         ((_mcr & McrOut1) != 0 ? MsrRi : 0) | ((_mcr & McrOut2) != 0 ? MsrDcd : 0))
                : HostModemInputs;
            _msrDelta = s.MsrDelta;
            _thrIPending = s.ThrInterruptPending;
            _timeoutPending = s.TimeoutPending && _rxFifo.Count > 0;
            _cancelTimeout?.Invoke();
            _cancelTimeout = null;
            _lastRxActivityNs = _clock.NowNs - s.NsSinceRxActivity;
            RefillFromHost();
            ArmTimeout();
            // Drive the line to the restored interrupt state (a freshly built machine's starts low).
            UpdateIrq();
        }
    }
}
