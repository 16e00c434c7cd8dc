using Dirigent.Devices.Misc;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;
using Dirigent.Machine.Time;

namespace Dirigent.Devices.Serial;

/// <summary>Where a UART's transmitted bytes go (the host console, a file, a test buffer).</summary>
public interface ISerialBackend
{
    void Write(byte b);
}

/// <summary>
/// National Semiconductor 16550A UART (8 registers, 16-byte FIFOs) as found at COM1-COM4 on a PC. Transmission
/// is instantaneous: a byte written to THR goes straight to the backend (or, in loopback mode, to the receiver),
/// so THR/TSR are always empty afterwards and the THRE interrupt re-arms the way it does on hardware once the
/// shift register takes the byte. Host input waits in an unbounded host-side queue and enters the 16-byte receive
/// FIFO only as the guest drains it, so nothing typed is lost. The IRQ line is gated by MCR.OUT2 as on PC boards.
/// </summary>
public sealed partial class Uart16550 : IPortDevice, IStateful<Uart16550State>
{
    public const int PortCount = 8;
    private const int FifoSize = 16;
    private const int BaseClockHz = 115_200; // 1.8432 MHz / 16

    // Register offsets
    private const int RegData = 0, RegIer = 1, RegIirFcr = 2, RegLcr = 3, RegMcr = 4, RegLsr = 5, RegMsr = 6,
        RegScr = 7;

    // IER
    private const byte IerRda = 0x01, IerThre = 0x02, IerRls = 0x04, IerMsi = 0x08;
    // IIR interrupt identification codes
    private const byte IirNone = 0x01, IirRls = 0x06, IirRda = 0x04, IirTimeout = 0x0C, IirThre = 0x02,
        IirMsi = 0x00, IirFifoEnabled = 0xC0;
    // FCR
    private const byte FcrEnable = 0x01, FcrClearRx = 0x02;
    // LCR
    private const byte LcrDlab = 0x80;
    // MCR
    private const byte McrDtr = 0x01, McrRts = 0x02, McrOut1 = 0x04, McrOut2 = 0x08, McrLoop = 0x10;
    // LSR
    private const byte LsrDr = 0x01, LsrOe = 0x02, LsrErrorBits = 0x1E, LsrThre = 0x20, LsrTemt = 0x40;
    // MSR
    private const byte MsrCts = 0x10, MsrDsr = 0x20, MsrRi = 0x40, MsrDcd = 0x80;
    private const byte MsrDcts = 0x01, MsrDdsr = 0x02, MsrTeri = 0x04, MsrDdcd = 0x08;
    /// <summary>A host console is always "connected": CTS, DSR and DCD asserted, RI idle.</summary>
    private const byte HostModemInputs = MsrCts | MsrDsr | MsrDcd;

    private readonly ISerialBackend _backend;
    private readonly IIrqLine? _irq;
    private readonly DeviceClock _clock;
    private readonly object _lock = new();

    private byte _ier, _lcr, _mcr, _scr;
    private ushort _divisor = 12; // 9600 baud until the guest programs it
    private bool _fifoEnabled;
    private int _rxTrigger = 1;
    private readonly Queue<byte> _rxFifo = new(FifoSize);
    private readonly Queue<byte> _hostInput = new();
    private byte _lsrErrors;
    private byte _msrDelta;
    private byte _msrInputs = HostModemInputs;
    private bool _thrIPending;
    private bool _timeoutPending;
    private long _lastRxActivityNs;
    private Action? _cancelTimeout;
    private long _timeoutArmedFor;
    private bool _irqLevel;

    public Uart16550(ISerialBackend backend, IIrqLine? irq, VirtualClock clock)
        : this(backend, irq, DeviceClock.From(clock)) { }

    internal Uart16550(ISerialBackend backend, IIrqLine? irq, DeviceClock clock)
    {
        _backend = backend;
        _irq = irq;
        _clock = clock;
    }

    /// <summary>Bytes from the host (stdin feeder); callable from any thread. They wait until the guest has room.</summary>
    public void EnqueueInput(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            foreach (byte b in data) _hostInput.Enqueue(b);
            RefillFromHost();
            ArmTimeout();
            UpdateIrq();
        }
    }

    /// <summary>Host bytes not yet in the receive FIFO (for tests and flow diagnostics).</summary>
    public int PendingHostInput { get { lock (_lock) return _hostInput.Count; } }

    public uint Read(ushort offset, int size)
    {
        uint v;
        lock (_lock)
        {
            v = offset < PortCount ? ReadRegister(offset) : 0xFFu;
            UpdateIrq();
        }
        // Registers are bytes; wider accesses see open bus above (drivers never do them).
        return size switch { 2 => v | 0xFF00, 4 => v | 0xFFFF_FF00, _ => v };
    }

    public void Write(ushort offset, int size, uint value)
    {
        if (offset >= PortCount) return;
        lock (_lock)
        {
            WriteRegister(offset, (byte)value);
            UpdateIrq();
        }
    }

    private bool Dlab => (_lcr & LcrDlab) != 0;
    private bool Loopback => (_mcr & McrLoop) != 0;
    private int RxCapacity => _fifoEnabled ? FifoSize : 1;

    private byte ReadRegister(int reg)
    {
        switch (reg)
        {
            case RegData:
                if (Dlab) return (byte)_divisor;
                return ReadRbr();
            case RegIer:
                return Dlab ? (byte)(_divisor >> 8) : _ier;
            case RegIirFcr:
            {
                byte id = InterruptId();
                // Reading IIR while it reports THRE acknowledges that interrupt.
                if (id == IirThre) _thrIPending = false;
                return (byte)(id | (_fifoEnabled ? IirFifoEnabled : 0));
            }
            case RegLcr: return _lcr;
            case RegMcr: return _mcr;
            case RegLsr:
            {
                byte lsr = (byte)((_rxFifo.Count > 0 ? LsrDr : 0) | _lsrErrors | LsrThre | LsrTemt);
                _lsrErrors = 0;
                return lsr;
            }
            case RegMsr:
            {
                byte msr = (byte)(_msrInputs | _msrDelta);
                _msrDelta = 0;
                return msr;
            }
            default: return _scr;
        }
    }

    private byte ReadRbr()
    {
        byte b = _rxFifo.Count > 0 ? _rxFifo.Dequeue() : (byte)0;
        _timeoutPending = false;
        _lastRxActivityNs = _clock.NowNs;
        RefillFromHost();
        ArmTimeout();
        return b;
    }

    private void WriteRegister(int reg, byte value)
    {
        switch (reg)
        {
            case RegData:
                if (Dlab) { _divisor = (ushort)((_divisor & 0xFF00) | value); return; }
                Transmit(value);
                return;
            case RegIer:
                if (Dlab) { _divisor = (ushort)((_divisor & 0x00FF) | (value << 8)); return; }
                byte old = _ier;
                _ier = (byte)(value & 0x0F);
                // Enabling THRE while the transmitter is empty raises it at once (Linux's startup test relies on
                // it, and toggles IER to re-arm it).
                if ((old & IerThre) == 0 && (_ier & IerThre) != 0) _thrIPending = true;
                return;
            case RegIirFcr:
                WriteFcr(value);
                return;
            case RegLcr:
                _lcr = value;
                return;
            case RegMcr:
                WriteMcr((byte)(value & 0x1F));
                return;
            case RegLsr:
            case RegMsr:
                return; // factory test registers on a 16550A: writes have no defined effect
            default:
                _scr = value;
                return;
        }
    }

    private void Transmit(byte value)
    {
        if (Loopback)
        {
            if (_rxFifo.Count < RxCapacity) { ReceiveIntoFifo(value); ArmTimeout(); }
            else _lsrErrors |= LsrOe;
        }
        else _backend.Write(value);
        _thrIPending = true;
    }

    private void WriteFcr(byte value)
    {
        bool enable = (value & FcrEnable) != 0;
        if (enable != _fifoEnabled)
        {
            // Switching between FIFO and character mode resets both FIFOs.
            _rxFifo.Clear();
            _fifoEnabled = enable;
            _timeoutPending = false;
        }
        if (!enable)
        {
            _rxTrigger = 1;
            RefillFromHost();
            ArmTimeout();
            return;
        }
        if ((value & FcrClearRx) != 0)
        {
            _rxFifo.Clear();
            _timeoutPending = false;
        }
        // Clearing the transmit FIFO (bit 2) has nothing to do: transmission never queues.
        _rxTrigger = (value >> 6) switch { 0 => 1, 1 => 4, 2 => 8, _ => 14 };
        RefillFromHost();
        ArmTimeout();
    }

    private void WriteMcr(byte value)
    {
        bool wasLoop = Loopback;
        _mcr = value;
        byte inputs = Loopback
            ? (byte)(((value & McrRts) != 0 ? MsrCts : 0) | ((value & McrDtr) != 0 ? MsrDsr : 0) |
                     ((value & McrOut1) != 0 ? MsrRi : 0) | ((value & McrOut2) != 0 ? MsrDcd : 0))
            : HostModemInputs;
        byte changed = (byte)(inputs ^ _msrInputs);
        if ((changed & MsrCts) != 0) _msrDelta |= MsrDcts;
        if ((changed & MsrDsr) != 0) _msrDelta |= MsrDdsr;
        if ((changed & MsrDcd) != 0) _msrDelta |= MsrDdcd;
        if ((_msrInputs & MsrRi) != 0 && (inputs & MsrRi) == 0) _msrDelta |= MsrTeri;
        _msrInputs = inputs;
        // Leaving loopback reconnects the receiver to the host.
        if (wasLoop && !Loopback) { RefillFromHost(); ArmTimeout(); }
    }

    private void ReceiveIntoFifo(byte b)
    {
        _rxFifo.Enqueue(b);
        _timeoutPending = false;
        _lastRxActivityNs = _clock.NowNs;
    }

    /// <summary>Moves waiting host bytes into the receive FIFO; callers re-arm the timeout afterwards.</summary>
    private void RefillFromHost()
    {
        if (Loopback) return;
        while (_hostInput.Count > 0 && _rxFifo.Count < RxCapacity)
            ReceiveIntoFifo(_hostInput.Dequeue());
    }

    /// <summary>Four character times at the programmed rate: the 16550A's receive-timeout interval.</summary>
    private long TimeoutNs()
    {
        long div = _divisor == 0 ? 0x10000 : _divisor;
        long charNs = 10 * div * 1_000_000_000L / BaseClockHz;
        return Math.Clamp(4 * charNs, 50_000, 100_000_000);
    }

    private void ArmTimeout()
    {
        bool wanted = _fifoEnabled && _rxFifo.Count > 0 && !_timeoutPending;
        // Keep a timer already armed for the same last activity: host bytes arriving into a full FIFO change
        // nothing.
        if (wanted && _cancelTimeout != null && _timeoutArmedFor == _lastRxActivityNs) return;
        _cancelTimeout?.Invoke();
        _cancelTimeout = null;
        if (!wanted) return;
        long activity = _timeoutArmedFor = _lastRxActivityNs;
        _cancelTimeout = _clock.Schedule(activity + TimeoutNs(), () => OnTimeout(activity));
    }

    private void OnTimeout(long activity)
    {
        lock (_lock)
        {
            if (activity == _timeoutArmedFor) _cancelTimeout = null;
            if (activity != _lastRxActivityNs || !_fifoEnabled || _rxFifo.Count == 0) return;
            _timeoutPending = true;
            UpdateIrq();
        }
    }

    private byte InterruptId()
    {
        if ((_ier & IerRls) != 0 && (_lsrErrors & LsrErrorBits) != 0) return IirRls;
        if ((_ier & IerRda) != 0 && _rxFifo.Count > 0)
        {
            if (_rxFifo.Count >= (_fifoEnabled ? _rxTrigger : 1)) return IirRda;
            if (_timeoutPending) return IirTimeout;
        }
        if ((_ier & IerThre) != 0 && _thrIPending) return IirThre;
        if ((_ier & IerMsi) != 0 && _msrDelta != 0) return IirMsi;
        return IirNone;
    }

    /// <summary>Drives the IRQ line; called with the lock held so levels reach the line in order.</summary>
    private void UpdateIrq()
    {
        bool level = (_mcr & McrOut2) != 0 && InterruptId() != IirNone;
        if (level == _irqLevel) return;
        _irqLevel = level;
        _irq?.Set(level);
    }
}
