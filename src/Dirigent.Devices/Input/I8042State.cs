using Dirigent.Machine.State;

namespace Dirigent.Devices.Input;

/// <summary>The 8042 keyboard controller and its keyboard (<see cref="I8042"/>).</summary>
public sealed record I8042State : ISavedState
{
    public static int FormatVersion => 1;
    /// <summary>Controller configuration byte ("command byte") and output port.</summary>
    public byte ConfigByte, OutputPort;
    /// <summary>Status bit 3: the last write went to port 0x64.</summary>
    public bool LastWriteWasCommand;
    /// <summary>A controller command (0x60..0x7F, 0xD1..0xD4) or keyboard command (0xED, 0xF0, 0xF3) waiting for its data byte; 0 = none.</summary>
    public byte PendingControllerCommand, PendingKeyboardCommand;
    public bool KeyboardScanning;
    public byte ScancodeSet;
    /// <summary>Output buffer queue, oldest first; <see cref="OutputAux"/> marks the bytes from the AUX side (same length).</summary>
    public byte[] Output = [];
    public bool[] OutputAux = [];
}
