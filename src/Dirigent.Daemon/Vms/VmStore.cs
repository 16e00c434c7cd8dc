using System.Text.Json;
using Dirigent.Daemon.Api;
using Dirigent.Inventory;
using Microsoft.AspNetCore.Http;
using Dirigent.Api;

namespace Dirigent.Daemon.Vms;

/// <summary>
/// VM records in the inventory at "vms/NAME". Every write is a compare-and-set on the revision read just before, so
/// two requests racing on one VM never lose each other's change: the loser re-reads and re-applies (or, for a client's
/// If-Match, gets its 412).
/// </summary>
internal sealed class VmStore(IInventory inventory)
{
    public const string Prefix = "vms/";

    public static string Key(string name) => Prefix + name;

    public async Task<(VmRecord Record, long Revision)?> GetAsync(string name, CancellationToken ct = default)
    {
        // A name no VM can have (from a URL path) is simply absent; it never reaches the inventory's key checks.
        if (!VmRequestParser.IsValidName(name)) return null;
        var e = await inventory.GetAsync(Key(name), ct);
        return e == null ? null : (Decode(e.Value), e.Revision);
    }

    public async Task<(VmRecord Record, long Revision)> RequireAsync(string name, CancellationToken ct = default)
        => await GetAsync(name, ct) ?? throw ApiJson.NotFound($"no VM named '{name}'");

    public async Task<List<(VmRecord Record, long Revision)>> ListAsync(CancellationToken ct = default)
    {
        var list = await inventory.ListAsync(Prefix, ct);
        return list.Entries.Select(e => (Decode(e.Value), e.Revision)).ToList();
    }

    /// <summary>Writes a new record; false when the name is taken.</summary>
    public async Task<long?> CreateAsync(VmRecord rec, CancellationToken ct = default)
    {
        var r = await inventory.PutAsync(Key(rec.Name), Encode(rec), expectedRevision: 0, ct: ct);
        return r.Succeeded ? r.Revision : null;
    }

    /// <summary>
    /// Applies <paramref name="mutate"/> to the current record and writes it with compare-and-set, retrying on a lost
    /// race. <paramref name="mutate"/> may throw (an API error) to refuse; it sees a private copy each try. With
    /// <paramref name="ifMatch"/>, a record at another revision is a 412 instead of a retry.
    /// </summary>
    public async Task<(VmRecord Old, VmRecord New, long Revision)> UpdateAsync(string name, Action<VmRecord> mutate,
        long? ifMatch = null, CancellationToken ct = default)
    {
        while (true)
        {
            var (rec, rev) = await RequireAsync(name, ct);
            if (ifMatch != null && ifMatch != rev)
                throw new ApiRequestException(StatusCodes.Status412PreconditionFailed,
                    $"VM '{name}' is at revision {rev}, not {ifMatch} (If-Match): read it again");
            var next = rec.Clone();
            mutate(next);
            var w = await inventory.PutAsync(Key(name), Encode(next), expectedRevision: rev, ct: ct);
            if (w.Succeeded) return (rec, next, w.Revision);
            if (ifMatch != null)
                throw new ApiRequestException(StatusCodes.Status412PreconditionFailed, $"VM '{name}' changed meanwhile (If-Match)");
        }
    }

    /// <summary>Deletes the record if it is still at <paramref name="revision"/>; false if it changed meanwhile.</summary>
    public async Task<bool> DeleteAsync(string name, long revision, CancellationToken ct = default)
        => (await inventory.DeleteAsync(Key(name), revision, ct)).Succeeded;

    /// <summary>Writes <paramref name="rec"/> if the entry is still at <paramref name="revision"/> (the scheduler's CAS).</summary>
    public Task<WriteResult> PutRecordAsync(VmRecord rec, long revision, CancellationToken ct = default)
        => inventory.PutAsync(Key(rec.Name), Encode(rec), expectedRevision: revision, ct: ct);

    public static VmRecord DecodeRecord(byte[] v) => Decode(v);

    private static VmRecord Decode(byte[] v) => JsonSerializer.Deserialize<VmRecord>(v, ApiJson.Options)!;
    private static byte[] Encode(VmRecord r) => JsonSerializer.SerializeToUtf8Bytes(r, ApiJson.Options);
}
