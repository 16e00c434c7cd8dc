namespace Dirigent.Images.Debian;

/// <summary>What `dirigent image build debian` was asked for, checked before anything is downloaded.</summary>
public sealed record DebianImageOptions
{
    /// <summary>Releases we know how to build (their suites exist on deb.debian.org and ship the packages we name).</summary>
    public static readonly string[] KnownReleases = ["bullseye", "bookworm", "trixie"];
    public const string DefaultRelease = "bookworm";
    public const long DefaultSize = 4L << 30;
    public const string DefaultMirror = "http://deb.debian.org/debian";

    public required string OutPath { get; init; }
    public string Release { get; init; } = DefaultRelease;
    public long Size { get; init; } = DefaultSize;
    /// <summary>"qcow2" or "raw".</summary>
    public string Format { get; init; } = "qcow2";
    /// <summary>authorized_keys content for root, or null: then a random root password is set and printed once.</summary>
    public string? SshKeys { get; init; }
    public required string Hostname { get; init; }
    /// <summary>The Debian mirror (DIRIGENT_DEBIAN_MIRROR overrides the default, e.g. for a local mirror).</summary>
    public string Mirror { get; init; } = DefaultMirror;
    /// <summary>Where downloaded .deb files are kept between builds (one directory per release below it).</summary>
    public required string CacheDir { get; init; }

    /// <summary>
    /// Builds and checks the options from the command line's values. Every problem is one line naming the option
    /// (<see cref="ImageBuildException.BadInput"/>).
    /// </summary>
    public static DebianImageOptions Parse(string outPath, string? release, string? size, string? format,
        string? sshKeyFile, string? hostname, string cacheDir, string? mirror = null)
    {
        if (string.IsNullOrWhiteSpace(outPath)) throw Bad("--out is required");
        string full = Path.GetFullPath(outPath);
        if (File.Exists(full) || Directory.Exists(full)) throw Bad($"--out {outPath} already exists (remove it first)");
        string? dir = Path.GetDirectoryName(full);
        if (dir == null || !Directory.Exists(dir)) throw Bad($"--out {outPath}: directory {dir} does not exist");

        release ??= DefaultRelease;
        if (!KnownReleases.Contains(release))
            throw Bad($"unknown --release '{release}' (known: {string.Join(", ", KnownReleases)})");

        format ??= "qcow2";
        if (format is not ("qcow2" or "raw")) throw Bad($"--format must be qcow2 or raw, got '{format}'");

        long bytes = DefaultSize;
        if (size != null)
        {
            try { bytes = ParseSize(size); }
            catch (FormatException e) { throw Bad($"--size: {e.Message}"); }
        }
        try { BiosDiskLayout.Validate(bytes); }
        catch (ImageBuildException e) { throw Bad(e.Message); }

        string? keys = null;
        if (sshKeyFile != null)
        {
            if (!File.Exists(sshKeyFile)) throw Bad($"--ssh-key {sshKeyFile}: no such file");
            try { keys = File.ReadAllText(sshKeyFile); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw Bad($"--ssh-key {sshKeyFile}: {e.Message}"); }
            if (keys.Contains("PRIVATE KEY", StringComparison.Ordinal))
                throw Bad($"--ssh-key {sshKeyFile} is a private key; give the public key (the .pub file)");
            try { GuestConfig.ValidateSshKeys(keys, sshKeyFile); }
            catch (ImageBuildException e) { throw Bad(e.Message); }
            if (!keys.EndsWith('\n')) keys += "\n";
        }

        hostname ??= GuestConfig.HostnameFromPath(full);
        if (!GuestConfig.IsValidHostname(hostname))
            throw Bad($"--hostname '{hostname}' is not a hostname (a-z, 0-9 and '-', at most 63 characters, no '-' at either end)");

        mirror ??= Environment.GetEnvironmentVariable("DIRIGENT_DEBIAN_MIRROR") is { Length: > 0 } m ? m : DefaultMirror;
        return new DebianImageOptions
        {
            OutPath = full, Release = release, Size = bytes, Format = format, SshKeys = keys, Hostname = hostname,
            Mirror = mirror, CacheDir = cacheDir,
        };
    }

    /// <summary>8G, 512M, 4096K or bytes; G/M/K are binary (GiB...), a trailing 'B' or 'iB' is allowed.</summary>
    public static long ParseSize(string text)
    {
        string t = text.Trim().ToUpperInvariant();
        if (t.EndsWith("IB", StringComparison.Ordinal)) t = t[..^2];
        else if (t.EndsWith('B') && t.Length > 1 && !char.IsDigit(t[^2])) t = t[..^1];
        int shift = t.Length > 0 ? t[^1] switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => 0 } : 0;
        if (shift != 0) t = t[..^1];
        if (!long.TryParse(t, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long n) || n <= 0)
            throw new FormatException($"'{text}' is not a size (like 4G, 3072M or a number of bytes)");
        if (n > long.MaxValue >> shift) throw new FormatException($"'{text}' is too large");
        return n << shift;
    }

    private static ImageBuildException Bad(string message) => new(message, badInput: true);
}
