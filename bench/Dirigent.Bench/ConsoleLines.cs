using System.Text;

namespace Dirigent.Bench;

/// <summary>
/// A guest's serial output as a bench watches it: all of it kept, and each completed line handed once to a callback.
/// Constant work per byte: Dirigent writes the console on the vCPU thread, so a watcher that searched the whole
/// output again for every byte (as the benches' watchers did) cost Dirigent's side of a benchmark time growing with
/// the square of the output (a boot log is ~20 KB), while QEMU's side was read from a pipe by another thread.
/// Not thread-safe: callers lock.
/// </summary>
internal sealed class ConsoleLines(Action<string> onLine)
{
    private readonly StringBuilder _all = new();
    private readonly StringBuilder _line = new();

    /// <summary>Bytes as ASCII (others become '?', as Encoding.ASCII decodes them).</summary>
    public void Add(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes) Add(b);
    }

    public void Add(string s)
    {
        foreach (char ch in s) Add(ch < 0x80 ? (byte)ch : (byte)'?');
    }

    public void Add(byte b)
    {
        char ch = b < 0x80 ? (char)b : '?';
        _all.Append(ch);
        if (ch == '\n')
        {
            onLine(_line.ToString());
            _line.Clear();
        }
        else if (ch != '\r') _line.Append(ch);
    }

    public string Text => _all.ToString();

    public string Tail(int chars) => _all.ToString(Math.Max(0, _all.Length - chars), Math.Min(chars, _all.Length));
}
