using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Dirigent.Tests.Fuzz;

/// <summary>
/// Budget, seeds and replay for the fuzzers in this folder.
/// <list type="bullet">
/// <item>FUZZ_CASES=N: cases per fuzz test (default: each test's small CI budget).</item>
/// <item>FUZZ_SEED=S: the run's seed (default <see cref="DefaultSeed"/>, so CI runs are reproducible).</item>
/// <item>FUZZ_SKIP=K: start at case K (with FUZZ_CASES=1, runs exactly the case a failure names).</item>
/// <item>FUZZ_REPORT=path: appends "test cases milliseconds" per test, to add up an on-demand run.</item>
/// </list>
/// Every case draws from its own <see cref="Random"/>, seeded from (run seed, test name, case index) with a stable
/// hash, so one case replays alone without running the ones before it. A case builds its own device (or resets
/// the shared one) for the same reason.
/// </summary>
public static class FuzzBudget
{
    public const int DefaultSeed = 20_251_015;

    public static int Seed => int.TryParse(Environment.GetEnvironmentVariable("FUZZ_SEED"), out var s) ? s : DefaultSeed;
    public static long Skip => long.TryParse(Environment.GetEnvironmentVariable("FUZZ_SKIP"), out var k) && k > 0 ? k : 0;

    /// <summary>FUZZ_CASES when set, else <paramref name="ciDefault"/>.</summary>
    public static long Cases(long ciDefault) =>
        long.TryParse(Environment.GetEnvironmentVariable("FUZZ_CASES"), out var n) && n > 0 ? n : ciDefault;

    /// <summary>FNV-1a (64-bit) over the text: the same in every process, unlike string.GetHashCode.</summary>
    public static ulong StableHash(string s)
    {
        ulong h = 14695981039346656037;
        foreach (char ch in s) { h ^= ch; h *= 1099511628211; }
        return h;
    }

    /// <summary>The seed of one case: a SplitMix64 finaliser over (run seed, test, index), so neighbours differ widely.</summary>
    public static int CaseSeed(int runSeed, string test, long index)
    {
        ulong z = StableHash(test) ^ ((ulong)(uint)runSeed << 32) ^ (ulong)index * 0x9E3779B97F4A7C15;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
        return (int)(z ^ (z >> 31));
    }

    /// <summary>The command that re-runs exactly one case of one test.</summary>
    public static string Replay(string fullTestName, int seed, long index) =>
        $"FUZZ_SEED={seed} FUZZ_CASES=1 FUZZ_SKIP={index} dotnet test tests/Dirigent.Tests -c Release --filter \"FullyQualifiedName={fullTestName}\"";

    /// <summary>
    /// Runs cases [FUZZ_SKIP, FUZZ_SKIP + budget) of the calling test; <paramref name="body"/> gets the case index and
    /// its own Random. The first failure (an assertion or any exception the device let out) stops the run with the
    /// seed, the case and the replay command in the message. Returns the number of cases run.
    /// </summary>
    public static long Run(Type testClass, ITestOutputHelper? output, long ciDefault, Action<long, Random> body,
        [CallerMemberName] string test = "")
    {
        string full = $"{testClass.FullName}.{test}";
        int seed = Seed;
        long first = Skip, n = Cases(ciDefault);
        var sw = Stopwatch.StartNew();
        for (long i = first; i < first + n; i++)
        {
            var rnd = new Random(CaseSeed(seed, full, i));
            try { body(i, rnd); }
            catch (Exception ex)
            {
                throw new XunitException($"fuzz case failed (seed {seed}, case {i}): {ex.GetType().Name}: {ex.Message}\n" +
                    $"replay: {Replay(full, seed, i)}\n{ex.StackTrace}");
            }
        }
        Report(output, full, n, sw.ElapsedMilliseconds);
        return n;
    }

    /// <summary>Writes the count and time to the test output and, when FUZZ_REPORT names a file, appends them there.</summary>
    public static void Report(ITestOutputHelper? output, string test, long cases, long ms)
    {
        output?.WriteLine($"{test}: {cases} cases in {ms} ms (seed {Seed}, first case {Skip})");
        var path = Environment.GetEnvironmentVariable("FUZZ_REPORT");
        if (string.IsNullOrEmpty(path)) return;
        lock (typeof(FuzzBudget)) File.AppendAllText(path, $"{test} {cases} {ms}\n");
    }

    /// <summary>Throws a failure for the current case (so <see cref="Run"/> adds seed and replay).</summary>
    public static void Check([DoesNotReturnIf(false)] bool condition, string message)
    {
        if (!condition) throw new XunitException(message);
    }
}
