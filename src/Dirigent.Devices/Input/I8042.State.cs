using Dirigent.Machine.State;

namespace Dirigent.Devices.Input;

// Reset, save and restore.
public sealed partial class I8042
{
    private const byte PowerOnCtr = CtrKbdInt | CtrSys | CtrAuxDis | CtrXlate, PowerOnOutputPort = OutReset | OutA20;
    /// <summary>Upper bound for a restored output queue (typed-ahead scan codes).</summary>
    private const int MaxOutput = 1 << 16;

    /// <summary>Power-on state: configuration byte and output port as firmware leaves them, nothing queued, IRQ1 low.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _output.Clear();
            _ctr = PowerOnCtr;
            _outputPort = PowerOnOutputPort;
            _lastWriteWasCommand = false;
            _pendingControllerCommand = 0;
            _pendingKeyboardCommand = 0;
            _keyboardScanning = true;
            _scancodeSet = 2;
            SetIrq(false);
        }
    }

    public I8042State Save()
    {
        lock (_lock)
        {
            return new I8042State
            {
                ConfigByte = _ctr,
                OutputPort = _outputPort,
                LastWriteWasCommand = _lastWriteWasCommand,
                PendingControllerCommand = _pendingControllerCommand,
                PendingKeyboardCommand = _pendingKeyboardCommand,
                KeyboardScanning = _keyboardScanning,
                ScancodeSet = (byte)_scancodeSet,
                Output = _output.Select(o => o.Value).ToArray(),
                OutputAux = _output.Select(o => o.Aux).ToArray(),
            };
        }
    }

    public void Restore(I8042State s)
    {
        if (s.Output == null || s.OutputAux == null || s.Output.Length != s.OutputAux.Length)
            throw new StateRestoreException("i8042: output queue and its AUX marks differ in length");
        if (s.Output.Length > MaxOutput) throw new StateRestoreException($"i8042: {s.Output.Length} bytes queued");
        if (s.ScancodeSet is < 1 or > 3) throw new StateRestoreException($"i8042: scan code set {s.ScancodeSet}");
        if (s.PendingControllerCommand != 0 && s.PendingControllerCommand is not (>= 0x60 and <= 0x7F or >= 0xD1 and <= 0xD4))
            throw new StateRestoreException($"i8042: controller command {s.PendingControllerCommand:x2} takes no data byte");
        if (s.PendingKeyboardCommand is not (0 or 0xED or 0xF0 or 0xF3))
            throw new StateRestoreException($"i8042: keyboard command {s.PendingKeyboardCommand:x2} takes no parameter");
        lock (_lock)
        {
            _output.Clear();
            for (int i = 0; i < s.Output.Length; i++) _output.Enqueue((s.Output[i], s.OutputAux[i]));
            _ctr = s.ConfigByte;
            _outputPort = s.OutputPort;
            _lastWriteWasCommand = s.LastWriteWasCommand;
            _pendingControllerCommand = s.PendingControllerCommand;
            _pendingKeyboardCommand = s.PendingKeyboardCommand;
            _keyboardScanning = s.KeyboardScanning;
            _scancodeSet = s.ScancodeSet;
            // Drive IRQ1 to what the output buffer says (a freshly built machine's line starts low).
            UpdateIrq();
        }
    }
}
