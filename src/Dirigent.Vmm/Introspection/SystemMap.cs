using System.Globalization;

namespace Dirigent.Vmm.Introspection;

/// <summary>A kernel's System.map ("ADDRESS TYPE NAME" lines, as nm prints them): symbol → link-time address.</summary>
public sealed class SystemMap
{
    private readonly Dictionary<string, ulong> _byName = new(StringComparer.Ordinal);
    private readonly ulong[] _textAddrs;
    private readonly string[] _textNames;

    public int Count => _byName.Count;

    private SystemMap(IEnumerable<string> lines)
    {
        var text = new List<(ulong, string)>();
        foreach (var line in lines)
        {
            var parts = line.Split(' ', 3, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 3 || parts[0].Length > 16) continue;
            if (!ulong.TryParse(parts[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong addr)) continue;
            _byName.TryAdd(parts[2], addr);
            if (parts[1] is "T" or "t" or "D" or "d") text.Add((addr, parts[2]));
        }
        text.Sort((a, b) => a.Item1.CompareTo(b.Item1));
        _textAddrs = text.Select(t => t.Item1).ToArray();
        _textNames = text.Select(t => t.Item2).ToArray();
    }

    /// <summary>Reads a System.map; throws <see cref="VmException"/> (bad input) with one line when it has no symbols.</summary>
    public static SystemMap Load(string path)
    {
        SystemMap m;
        try { m = new SystemMap(File.ReadLines(path)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new VmException($"System.map {path}: {e.Message}", badInput: true);
        }
        if (m.Count < 100) throw new VmException($"System.map {path}: no kernel symbols in it (Debian's package ships a stub; the real one is in the -dbg package)", badInput: true);
        return m;
    }

    public static SystemMap Parse(IEnumerable<string> lines) => new(lines);

    public bool TryGet(string name, out ulong addr) => _byName.TryGetValue(name, out addr);

    /// <summary>The text/data symbol at exactly this link-time address, if any.</summary>
    public string? NameAt(ulong addr)
    {
        int k = Array.BinarySearch(_textAddrs, addr);
        return k >= 0 ? _textNames[k] : null;
    }
}
