using Dirigent.Machine;
using Dirigent.Machine.Bus;
using Dirigent.Machine.Interrupts;
using Dirigent.Machine.State;

namespace Dirigent.Devices.Input;

/// <summary>
/// Intel 8042 keyboard controller with an MF2 keyboard and no mouse. The controller answers its commands at once
/// (input buffer never busy); the keyboard answers the commands Linux's atkbd probe sends. The AUX port is absent:
/// the controller's own AUX loopback works, but enabling the AUX interface never clears the "AUX disabled" bit,
/// which is how Linux's i8042 driver recognises a controller without a mouse port. Pulsing the output port's
/// reset line resets the machine.
/// Ports: <see cref="DataPort"/> at 0x60 and <see cref="CommandPort"/> at 0x64 (two single-port devices because
/// port 0x61 lies between them).
/// </summary>
public sealed partial class I8042 : IStateful<I8042State>
{
    // Status register
    private const byte StsObf = 0x01, StsSys = 0x04, StsCmd = 0x08, StsUnlocked = 0x10, StsAuxData = 0x20;
    // Controller configuration byte ("command byte")
    private const byte CtrKbdInt = 0x01, CtrAuxInt = 0x02, CtrSys = 0x04, CtrKbdDis = 0x10, CtrAuxDis = 0x20,
        CtrXlate = 0x40;
    // Output port
    private const byte OutReset = 0x01, OutA20 = 0x02;

    private readonly MachineModel _vm;
    private readonly IIrqLine? _irq1;
    private readonly object _lock = new();
    private readonly Queue<(byte Value, bool Aux)> _output = new();
    private byte _ctr = PowerOnCtr;
    private byte _outputPort = PowerOnOutputPort;
    private bool _lastWriteWasCommand;
    private byte _pendingControllerCommand; // a controller command waiting for its data byte (0 = none)
    private byte _pendingKeyboardCommand;   // a keyboard command waiting for its parameter (0 = none)
    private bool _keyboardScanning = true;
    private int _scancodeSet = 2;
    private bool _irqLevel;

    public I8042(MachineModel vm, IIrqLine? irq1)
    {
        _vm = vm;
        _irq1 = irq1;
        DataPort = new Port(this, data: true);
        CommandPort = new Port(this, data: false);
    }

    /// <summary>Port 0x60: output buffer (read) and data / keyboard commands (write).</summary>
    public IPortDevice DataPort { get; }

    /// <summary>Port 0x64: status register (read) and controller commands (write).</summary>
    public IPortDevice CommandPort { get; }

    /// <summary>Gate A20 as last set through the output port (stored; the machine does not wrap addresses).</summary>
    public bool A20Enabled { get { lock (_lock) return (_outputPort & OutA20) != 0; } }

    /// <summary>Queues keyboard scan codes (already in the set the guest sees) as if typed.</summary>
    public void EnqueueScancodes(ReadOnlySpan<byte> codes)
    {
        lock (_lock)
        {
            if (!_keyboardScanning || (_ctr & CtrKbdDis) != 0) return;
            foreach (byte b in codes) _output.Enqueue((b, false));
            UpdateIrq();
        }
    }

    private sealed class Port(I8042 owner, bool data) : IPortDevice
    {
        public uint Read(ushort offset, int size)
        {
            uint v = offset == 0 ? (data ? owner.ReadData() : owner.ReadStatus()) : 0xFFu;
            return size switch { 2 => v | 0xFF00, 4 => v | 0xFFFF_FF00, _ => v };
        }

        public void Write(ushort offset, int size, uint value)
        {
            if (offset != 0) return;
            if (data) owner.WriteData((byte)value);
            else owner.WriteCommand((byte)value);
        }
    }

    private byte ReadStatus()
    {
        lock (_lock)
        {
            byte s = StsUnlocked;
            if (_output.Count > 0)
            {
                s |= StsObf;
                if (_output.Peek().Aux) s |= StsAuxData;
            }
            if ((_ctr & CtrSys) != 0) s |= StsSys;
            if (_lastWriteWasCommand) s |= StsCmd;
            return s;
        }
    }

    private byte ReadData()
    {
        lock (_lock)
        {
            if (_output.Count == 0) return 0; // re-reading an empty buffer returns stale data on hardware
            byte v = _output.Dequeue().Value;
            // Lower the line so the next queued byte (if any) produces a fresh edge.
            SetIrq(false);
            UpdateIrq();
            return v;
        }
    }

    private void WriteCommand(byte cmd)
    {
        bool reset = false;
        lock (_lock)
        {
            _lastWriteWasCommand = true;
            _pendingControllerCommand = 0;
            switch (cmd)
            {
                case 0x20: Reply(_ctr); break;                                  // read configuration byte
                case >= 0x21 and <= 0x3F: Reply(0); break;                      // read internal RAM
                case 0x60 or (>= 0x61 and <= 0x7F) or 0xD1 or 0xD2 or 0xD3 or 0xD4:
                    _pendingControllerCommand = cmd;                            // the data byte follows on 0x60
                    break;
                case 0xA4: Reply(0xF1); break;                                  // no password installed
                case 0xA7: _ctr |= CtrAuxDis; break;                            // disable AUX interface
                case 0xA8: break;                                               // enable AUX: no AUX port
                case 0xA9: Reply(0x02); break;                                  // AUX test: clock line stuck high
                case 0xAA: _ctr |= CtrSys; Reply(0x55); break;                  // controller self test passed
                case 0xAB: Reply(0x00); break;                                  // keyboard interface test passed
                case 0xAD: _ctr |= CtrKbdDis; break;
                case 0xAE: _ctr = (byte)(_ctr & ~CtrKbdDis); break;
                case 0xC0: Reply(0x80); break;                                  // input port: keyboard not inhibited
                case 0xD0: Reply(OutputPortValue()); break;
                case 0xDD: _outputPort = (byte)(_outputPort & ~OutA20); break;
                case 0xDF: _outputPort |= OutA20; break;
                case 0xE0: Reply(0x00); break;                                  // test inputs
                case >= 0xF0:
                    // Pulse output port lines: a low bit 0 pulses the CPU reset line.
                    if ((cmd & 1) == 0) reset = true;
                    break;
                default: break;
            }
            UpdateIrq();
        }
        if (reset) _vm.RequestPowerEvent(PowerEventKind.Reset);
    }

    private void WriteData(byte value)
    {
        bool reset = false;
        lock (_lock)
        {
            _lastWriteWasCommand = false;
            byte pending = _pendingControllerCommand;
            _pendingControllerCommand = 0;
            switch (pending)
            {
                case 0x60:
                    _ctr = value;
                    break;
                case >= 0x61 and <= 0x7F:
                    break; // internal RAM: not kept
                case 0xD1:
                    _outputPort = value;
                    // A write with the reset bit low holds the CPU in reset: treat it as a reset request.
                    if ((value & OutReset) == 0) reset = true;
                    break;
                case 0xD2:
                    _output.Enqueue((value, false));
                    break;
                case 0xD3:
                    _output.Enqueue((value, true)); // the controller's own AUX loopback works without a mouse
                    break;
                case 0xD4:
                    break; // write to AUX device: nothing is attached, the byte is lost
                default:
                    KeyboardCommand(value);
                    break;
            }
            UpdateIrq();
        }
        if (reset) _vm.RequestPowerEvent(PowerEventKind.Reset);
    }

    private void KeyboardCommand(byte value)
    {
        byte pending = _pendingKeyboardCommand;
        _pendingKeyboardCommand = 0;
        switch (pending)
        {
            case 0xED: // LED state
            case 0xF3: // typematic rate
                Reply(0xFA);
                return;
            case 0xF0: // scan code set: 0 queries, 1-3 select
                Reply(0xFA);
                if (value == 0) Reply((byte)((_ctr & CtrXlate) != 0 ? TranslatedSet() : _scancodeSet));
                else if (value <= 3) _scancodeSet = value;
                return;
        }
        switch (value)
        {
            case 0xED or 0xF3 or 0xF0:
                _pendingKeyboardCommand = value;
                Reply(0xFA);
                break;
            case 0xEE: Reply(0xEE); break;                    // echo
            case 0xF2:                                       // identify: MF2 keyboard
                Reply(0xFA);
                Reply(0xAB);
                Reply((byte)((_ctr & CtrXlate) != 0 ? 0x41 : 0x83));
                break;
            case 0xF4: _keyboardScanning = true; Reply(0xFA); break;
            case 0xF5: _keyboardScanning = false; Reply(0xFA); break;
            case 0xF6: _keyboardScanning = true; Reply(0xFA); break;
            case >= 0xF7 and <= 0xFD: Reply(0xFA); break;    // scan-set-3 key type commands
            case 0xFE: Reply(0xFA); break;                   // resend: nothing to resend
            case 0xFF:                                       // reset and self test
                _keyboardScanning = true;
                _scancodeSet = 2;
                Reply(0xFA);
                Reply(0xAA);
                break;
            default: Reply(0xFE); break;                     // unknown command: resend request
        }
    }

    /// <summary>The set number as seen through the controller's translation (set 2 reads as 0x41).</summary>
    private int TranslatedSet() => _scancodeSet switch { 1 => 0x43, 2 => 0x41, _ => 0x3F };

    private byte OutputPortValue()
    {
        byte v = (byte)(_outputPort & ~(0x10 | 0x20) | OutReset);
        if (_output.Count > 0) v |= _output.Peek().Aux ? (byte)0x20 : (byte)0x10;
        return v;
    }

    private void Reply(byte value) => _output.Enqueue((value, false));

    /// <summary>IRQ1 follows a full output buffer holding keyboard/controller data while interrupts are enabled.</summary>
    private void UpdateIrq()
    {
        bool level = _output.Count > 0 && !_output.Peek().Aux && (_ctr & CtrKbdInt) != 0;
        SetIrq(level);
    }

    private void SetIrq(bool level)
    {
        if (level == _irqLevel) return;
        _irqLevel = level;
        _irq1?.Set(level);
    }
}
