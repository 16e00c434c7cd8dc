using System.Text.RegularExpressions;

namespace Dirigent.Tests.Infrastructure;

/// <summary>
/// Keeps the test sources honest (#15): no Thread.Sleep outside the few files whose pauses are documented as not
/// being synchronisation, and no seeds from string.GetHashCode/HashCode.Combine (randomised per process, so a
/// failure could not be replayed). Fails with file:line of each offence. Comment lines are not code and are skipped.
/// </summary>
public sealed class HonestTestsGuardTests
{
    /// <summary>Files allowed a Thread.Sleep, each with the reason written next to it in the file.</summary>
    private static readonly Dictionary<string, string> SleepAllowed = new()
    {
        ["Kvm/GuestHarness.cs"] = "LetItReachHlt: a coverage pause before waking a halted vCPU; no outcome depends on it",
        ["Net/TapInterfaceTests.cs"] = "a pause before a negative check (nothing is awaited)",
        ["Net/NetNamespace.cs"] = "polls `ip link` for an interface to come up, with a hang guard (no event to wait on)",
    };

    private static readonly Regex Sleep = new(@"\bThread\.Sleep\s*\(", RegexOptions.Compiled);
    private static readonly Regex UnstableHash = new(@"\.GetHashCode\s*\(\s*\)|\bHashCode\.Combine\s*\(", RegexOptions.Compiled);

    private static string TestsRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "tests", "Dirigent.Tests");
            if (File.Exists(Path.Combine(candidate, "Dirigent.Tests.csproj"))) return candidate;
        }
        throw new DirectoryNotFoundException($"tests/Dirigent.Tests not found above {AppContext.BaseDirectory}");
    }

    private static IEnumerable<(string File, int Line, string Text)> CodeLines()
    {
        string root = TestsRoot();
        foreach (string path in Directory.EnumerateFiles(root, "*.cs", SearchOption.AllDirectories))
        {
            string rel = Path.GetRelativePath(root, path).Replace('\\', '/');
            if (rel.StartsWith("bin/", StringComparison.Ordinal) || rel.StartsWith("obj/", StringComparison.Ordinal)) continue;
            if (rel == "Infrastructure/HonestTestsGuardTests.cs") continue; // names the patterns it looks for
            int n = 0;
            foreach (string line in File.ReadLines(path))
            {
                n++;
                string t = line.TrimStart();
                if (t.StartsWith("//", StringComparison.Ordinal) || t.StartsWith('*')) continue;
                yield return (rel, n, line);
            }
        }
    }

    [Fact]
    public void No_thread_sleep_outside_the_documented_files()
    {
        var offences = CodeLines().Where(l => Sleep.IsMatch(l.Text) && !SleepAllowed.ContainsKey(l.File))
            .Select(l => $"{l.File}:{l.Line}: {l.Text.Trim()}").ToList();
        Assert.True(offences.Count == 0,
            "Thread.Sleep in tests (wait on an event or condition with a hang guard instead, or add the file to " +
            $"SleepAllowed with the reason):\n{string.Join("\n", offences)}");
    }

    [Fact]
    public void No_seeds_from_per_process_hash_codes()
    {
        var offences = CodeLines().Where(l => UnstableHash.IsMatch(l.Text))
            .Select(l => $"{l.File}:{l.Line}: {l.Text.Trim()}").ToList();
        Assert.True(offences.Count == 0,
            "GetHashCode()/HashCode.Combine change every process; use Native.Differential.StableHash for seeds:\n" +
            string.Join("\n", offences));
    }
}
