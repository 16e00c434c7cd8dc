namespace Dirigent.Machine.Interrupts;

/// <summary>
/// Interrupt lines that several device sources share, as wired-OR lines on a board: the interrupt controller (ours
/// or the accelerator's) sees only the OR of its sources, and each of its edges once and in order.
/// </summary>
public sealed class WiredOrLines
{
    private readonly int[] _asserted;
    private readonly Action<int, bool> _drive;

    /// <summary>Held while a line changes and while the receiver is driven; receivers may take it for their own state.</summary>
    public object Lock { get; } = new();

    /// <param name="drive">Called under <see cref="Lock"/> when a line's OR changes (line, new level).</param>
    public WiredOrLines(int count, Action<int, bool> drive)
    {
        _asserted = new int[count];
        _drive = drive;
    }

    /// <summary>A new source on <paramref name="line"/> (the caller has validated the number).</summary>
    public IIrqLine NewSource(int line) => new Source(this, line);

    /// <summary>After the receiver was reset (every input low): drives high again each line a source still asserts.</summary>
    public void ReassertAll()
    {
        lock (Lock)
            for (int n = 0; n < _asserted.Length; n++)
                if (_asserted[n] > 0) _drive(n, true);
    }

    private sealed class Source(WiredOrLines lines, int line) : IIrqLine
    {
        private bool _level;

        public void Set(bool level)
        {
            lock (lines.Lock)
            {
                if (level == _level) return;
                _level = level;
                int before = lines._asserted[line];
                lines._asserted[line] += level ? 1 : -1;
                if ((before > 0) != (lines._asserted[line] > 0)) lines._drive(line, level);
            }
        }
    }
}
