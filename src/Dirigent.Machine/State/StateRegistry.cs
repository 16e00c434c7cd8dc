using System.Text.Json;
using System.Text.Json.Serialization;

namespace Dirigent.Machine.State;

/// <summary>One component's record in a snapshot: its record type's name and version, and the record as JSON.</summary>
public sealed record SavedUnit(string Type, int Version, JsonElement State);

/// <summary>
/// The machine's stateful components under stable names (<c>clock</c>, <c>pit</c>, <c>rtc</c>, <c>com1</c>,
/// <c>ioapic</c>, <c>lapic/0</c>, <c>pci/00:03.0</c>...). Reset, stop, start, save and restore of the whole machine
/// go through it, in registration order (stop in reverse), so nothing is forgotten when a device is added: a
/// component that is not registered is not reset on reboot and not in snapshots.
/// </summary>
public sealed class StateRegistry
{
    /// <summary>How records are written: fields and properties, camelCase, enums as strings.</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        IncludeFields = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        Converters = { new JsonStringEnumConverter() },
        WriteIndented = false,
    };

    private sealed record Entry(string Name, ILifecycle Unit, Func<SavedUnit>? Save, Action<SavedUnit>? Restore);

    private readonly List<Entry> _entries = new();

    public IEnumerable<string> Names => _entries.Select(e => e.Name);

    /// <summary>A component without state of its own to save (it still resets, stops and starts).</summary>
    public void Add(string name, ILifecycle unit) => AddEntry(new Entry(name, unit, null, null));

    public void Add<TState>(string name, IStateful<TState> unit) where TState : class, ISavedState
    {
        AddEntry(new Entry(name, unit,
            () => new SavedUnit(typeof(TState).Name, TState.FormatVersion, JsonSerializer.SerializeToElement(unit.Save(), Json)),
            saved =>
            {
                if (saved.Type != typeof(TState).Name)
                    throw new StateRestoreException($"component '{name}': saved state is a {saved.Type}, expected {typeof(TState).Name}");
                if (saved.Version != TState.FormatVersion)
                    throw new StateRestoreException($"component '{name}': saved state version {saved.Version}, this build reads version {TState.FormatVersion}");
                TState? s;
                try { s = saved.State.Deserialize<TState>(Json); }
                catch (JsonException e) { throw new StateRestoreException($"component '{name}': malformed saved state: {e.Message}"); }
                if (s == null) throw new StateRestoreException($"component '{name}': saved state is null");
                unit.Restore(s);
            }));
    }

    private void AddEntry(Entry e)
    {
        if (_entries.Any(x => x.Name == e.Name)) throw new ArgumentException($"component name '{e.Name}' registered twice");
        _entries.Add(e);
    }

    public void ResetAll() { foreach (var e in _entries) e.Unit.Reset(); }

    public void StopAll() { for (int i = _entries.Count - 1; i >= 0; i--) _entries[i].Unit.Stop(); }

    public void StartAll() { foreach (var e in _entries) e.Unit.Start(); }

    /// <summary>Every component's record by name (components without state are left out).</summary>
    public Dictionary<string, SavedUnit> SaveAll()
    {
        var d = new Dictionary<string, SavedUnit>();
        foreach (var e in _entries)
            if (e.Save != null) d[e.Name] = e.Save();
        return d;
    }

    /// <summary>
    /// Restores every component from <paramref name="saved"/>. The set of names must match exactly (a snapshot of
    /// another machine shape is refused before anything is restored).
    /// </summary>
    /// <param name="beforeUnit">Called with each component's name just before it is restored (after all checks), so
    /// the caller can put state that is not a component (vCPUs) in at the right point of the order.</param>
    public void RestoreAll(IReadOnlyDictionary<string, SavedUnit> saved, Action<string>? beforeUnit = null)
    {
        var expected = _entries.Where(e => e.Restore != null).Select(e => e.Name).ToHashSet();
        var missing = expected.Where(n => !saved.ContainsKey(n)).ToList();
        var extra = saved.Keys.Where(n => !expected.Contains(n)).ToList();
        if (missing.Count > 0 || extra.Count > 0)
            throw new StateRestoreException("snapshot does not match this machine: " +
                string.Join("; ", new[] {
                    missing.Count > 0 ? "missing " + string.Join(", ", missing) : null,
                    extra.Count > 0 ? "unknown " + string.Join(", ", extra) : null }.Where(s => s != null)));
        foreach (var e in _entries)
        {
            beforeUnit?.Invoke(e.Name);
            if (e.Restore != null) e.Restore(saved[e.Name]);
        }
    }
}
