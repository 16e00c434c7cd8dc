using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;

namespace Dirigent.Tests.Storage;

/// <summary>A scratch directory per test, removed afterwards.</summary>
public sealed class TempDir(bool inMemory = false) : IDisposable
{
    /// <summary>In memory (tmpfs /dev/shm, where fsync is free) for tests that open and close images hundreds of times.</summary>
    public string Path { get; } = inMemory && Directory.Exists("/dev/shm")
        ? Directory.CreateDirectory(System.IO.Path.Combine("/dev/shm", $"dirigent-storage-{Guid.NewGuid():N}")).FullName
        : Directory.CreateTempSubdirectory("dirigent-storage-").FullName;
    public string this[string name] => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

/// <summary>Runs QEMU's qemu-img (package qemu-utils); tests that need it fail with a clear message when it is missing.</summary>
public static class QemuImg
{
    private static readonly Lazy<string?> Location = new(() =>
        Environment.GetEnvironmentVariable("PATH")!.Split(':').Select(d => System.IO.Path.Combine(d, "qemu-img")).FirstOrDefault(File.Exists));

    /// <summary>Why qemu-img tests cannot run here (for Skip.If), or null.</summary>
    public static string? Missing => Location.Value == null ? "qemu-img is not installed (apt-get install qemu-utils)" : null;

    public static string Require() =>
        Location.Value ?? throw new Xunit.Sdk.XunitException("qemu-img is not installed (apt-get install qemu-utils), so this interop test cannot run");

    public static (int Rc, string Out, string Err) Run(params string[] args)
    {
        var psi = new ProcessStartInfo(Require()) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output, err.Result);
    }

    public static string MustRun(params string[] args)
    {
        var (rc, o, e) = Run(args);
        if (rc != 0) throw new Xunit.Sdk.XunitException($"qemu-img {string.Join(' ', args)} failed ({rc}): {e}{o}");
        return o;
    }

    /// <summary>`qemu-img check --output=json`: asserts no corruptions and no leaks.</summary>
    public static void AssertClean(string path)
    {
        var (rc, o, e) = Run("check", "--output=json", path);
        Assert.True(rc == 0, $"qemu-img check {path} exited {rc}: {e}{o}");
        using var doc = JsonDocument.Parse(o);
        var root = doc.RootElement;
        int Field(string n) => root.TryGetProperty(n, out var v) ? v.GetInt32() : 0;
        Assert.True(Field("corruptions") == 0 && Field("leaks") == 0 && Field("check-errors") == 0, $"qemu-img check {path}: {o}");
    }

    public static JsonElement Info(string path)
    {
        using var doc = JsonDocument.Parse(MustRun("info", "--output=json", path));
        return doc.RootElement.Clone();
    }
}

public static class FileHash
{
    public static string Of(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(f));
    }
}
