using System.Text.Json;
using Dirigent.Machine.State;

namespace Dirigent.Tests.Devices.Misc;

/// <summary>Helpers for the device save/restore tests: records as snapshot JSON, and a save-to-restore transfer.</summary>
internal static class SavedStates
{
    /// <summary>The record as a snapshot stores it.</summary>
    public static string Json<T>(T state) => JsonSerializer.Serialize(state, StateRegistry.Json);

    /// <summary>
    /// Saves <paramref name="from"/> and restores the record into <paramref name="to"/> the way a snapshot does:
    /// through a <see cref="StateRegistry"/>, the saved units written out as JSON text and read back.
    /// </summary>
    public static void Transfer<T>(IStateful<T> from, IStateful<T> to) where T : class, ISavedState
    {
        var source = new StateRegistry();
        source.Add("unit", from);
        string text = JsonSerializer.Serialize(source.SaveAll(), StateRegistry.Json);
        var saved = JsonSerializer.Deserialize<Dictionary<string, SavedUnit>>(text, StateRegistry.Json)!;
        var target = new StateRegistry();
        target.Add("unit", to);
        target.RestoreAll(saved);
    }

    /// <summary>A record's deep copy (through JSON), to edit into a hostile one.</summary>
    public static T Copy<T>(T state) => JsonSerializer.Deserialize<T>(Json(state), StateRegistry.Json)!;

    /// <summary>A hand-advanced clock at the given VM time (a restored machine's clock).</summary>
    public static ManualClock ClockAt(long ns)
    {
        var c = new ManualClock();
        c.AdvanceNs(ns - c.NowNs);
        return c;
    }

    /// <summary>Asserts that restoring the record throws StateRestoreException and leaves the unit's state as it was.</summary>
    public static void AssertRefused<T>(IStateful<T> unit, T hostile) where T : class, ISavedState
    {
        string before = Json(unit.Save());
        var e = Assert.Throws<StateRestoreException>(() => unit.Restore(hostile));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(before, Json(unit.Save()));
    }
}
