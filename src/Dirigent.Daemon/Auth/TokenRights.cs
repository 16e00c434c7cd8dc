namespace Dirigent.Daemon.Auth;

/// <summary>
/// What a management API token may do (issue #11). Each right implies the ones below it: admin ⊇ operate ⊇ read, so a
/// token is created with one level and <see cref="TokenRightsExtensions.Expand"/> fills in the implied ones.
/// </summary>
[Flags]
public enum TokenRights
{
    None = 0,
    /// <summary>GET requests: inspect VMs, disks, status.</summary>
    Read = 1,
    /// <summary>Lifecycle actions (start, stop, pause, ...) and the console.</summary>
    Operate = 2,
    /// <summary>Create and delete VMs, disks and tokens.</summary>
    Admin = 4,
}

public static class TokenRightsExtensions
{
    public const TokenRights All = TokenRights.Read | TokenRights.Operate | TokenRights.Admin;

    /// <summary>The rights with every implied one added (admin → operate → read). Undefined bits are dropped.</summary>
    public static TokenRights Expand(this TokenRights rights)
    {
        rights &= All;
        if ((rights & TokenRights.Admin) != 0) rights |= TokenRights.Operate;
        if ((rights & TokenRights.Operate) != 0) rights |= TokenRights.Read;
        return rights;
    }

    /// <summary>True when <paramref name="granted"/> (after implication) covers every right in <paramref name="required"/>.</summary>
    public static bool Covers(this TokenRights granted, TokenRights required)
        => (required & ~All) == 0 && (granted.Expand() & required) == required;

    /// <summary>Lower-case names, lowest first ("read", "operate", "admin"): the stored and displayed form.</summary>
    public static string[] ToNames(this TokenRights rights)
    {
        var names = new List<string>(3);
        if ((rights & TokenRights.Read) != 0) names.Add("read");
        if ((rights & TokenRights.Operate) != 0) names.Add("operate");
        if ((rights & TokenRights.Admin) != 0) names.Add("admin");
        return [.. names];
    }

    /// <summary>Parses one right's name (case-sensitive, as stored); false for anything else.</summary>
    public static bool TryParseName(string? name, out TokenRights right)
    {
        right = name switch
        {
            "read" => TokenRights.Read,
            "operate" => TokenRights.Operate,
            "admin" => TokenRights.Admin,
            _ => TokenRights.None,
        };
        return right != TokenRights.None;
    }
}
