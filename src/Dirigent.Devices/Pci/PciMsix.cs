using System.Buffers.Binary;

namespace Dirigent.Devices.Pci;

/// <summary>
/// MSI-X (PCI 3.0 §6.8.2): the capability's Message Control (enable, function mask), a vector table of 16-byte
/// entries (address, data, per-vector mask) and the pending-bit array, both in a memory BAR of the owning function.
/// A vector raised while masked sets its pending bit and is sent when unmasked. Messages go out through the bus's
/// <see cref="Dirigent.Machine.Interrupts.IInterruptSink.SignalMsi"/> and only while the function may master the bus.
/// </summary>
public sealed class PciMsix
{
    public const int EntrySize = 16;
    private const int ControlOffset = 2;
    private const ushort ControlFunctionMask = 1 << 14, ControlEnable = 1 << 15;
    private const uint VectorMasked = 1;

    private readonly PciDevice _owner;
    private readonly byte[] _table;
    private readonly ulong[] _pending;
    private readonly object _lock = new();

    public int CapabilityOffset { get; }
    public int VectorCount { get; }
    public int Bar { get; }
    public uint TableOffset { get; }
    public uint PbaOffset { get; }
    public int TableLength => VectorCount * EntrySize;
    public int PbaLength => ((VectorCount + 63) / 64) * 8;

    internal PciMsix(PciDevice owner, int capOffset, int vectors, int bar, uint tableOffset, uint pbaOffset)
    {
        if (vectors < 1 || vectors > 2048) throw new ArgumentOutOfRangeException(nameof(vectors));
        if ((tableOffset & 7) != 0 || (pbaOffset & 7) != 0) throw new ArgumentException("MSI-X table and PBA must be 8-byte aligned");
        _owner = owner;
        CapabilityOffset = capOffset;
        VectorCount = vectors;
        Bar = bar;
        TableOffset = tableOffset;
        PbaOffset = pbaOffset;
        _table = new byte[vectors * EntrySize];
        _pending = new ulong[(vectors + 63) / 64];
        owner.Set16(capOffset + ControlOffset, (ushort)(vectors - 1));
        owner.Set32(capOffset + 4, tableOffset | (uint)bar);
        owner.Set32(capOffset + 8, pbaOffset | (uint)bar);
        // Only the enable and function-mask bits of Message Control are writable.
        owner.SetWritableInternal(capOffset + ControlOffset + 1, 0xC0);
        Reset();
    }

    private ushort Control => _owner.Get16(CapabilityOffset + ControlOffset);
    public bool Enabled => (Control & ControlEnable) != 0;
    public bool FunctionMasked => (Control & ControlFunctionMask) != 0;

    /// <summary>Power-on state: every vector masked, nothing pending, MSI-X disabled (the config bytes reset with the device).</summary>
    public void Reset()
    {
        lock (_lock)
        {
            Array.Clear(_table);
            Array.Clear(_pending);
            for (int v = 0; v < VectorCount; v++)
                BinaryPrimitives.WriteUInt32LittleEndian(_table.AsSpan(v * EntrySize + 12), VectorMasked);
        }
    }

    public bool IsPending(int vector)
    {
        lock (_lock) return (_pending[vector >> 6] & (1UL << (vector & 63))) != 0;
    }

    public bool IsVectorMasked(int vector)
    {
        lock (_lock) return (BinaryPrimitives.ReadUInt32LittleEndian(_table.AsSpan(vector * EntrySize + 12)) & VectorMasked) != 0;
    }

    /// <summary>Raises <paramref name="vector"/>: sent now, or left pending while masked. Out-of-range vectors are ignored.</summary>
    public void Notify(int vector)
    {
        if ((uint)vector >= (uint)VectorCount) return;
        ulong address; uint data;
        lock (_lock)
        {
            if (!Enabled) return;
            if (FunctionMasked || IsMaskedLocked(vector))
            {
                _pending[vector >> 6] |= 1UL << (vector & 63);
                return;
            }
            (address, data) = MessageLocked(vector);
        }
        Send(address, data);
    }

    private bool IsMaskedLocked(int v) =>
        (BinaryPrimitives.ReadUInt32LittleEndian(_table.AsSpan(v * EntrySize + 12)) & VectorMasked) != 0;

    private (ulong, uint) MessageLocked(int v) =>
        (BinaryPrimitives.ReadUInt64LittleEndian(_table.AsSpan(v * EntrySize)),
         BinaryPrimitives.ReadUInt32LittleEndian(_table.AsSpan(v * EntrySize + 8)));

    private void Send(ulong address, uint data)
    {
        // An MSI is a memory write by the function: without bus mastering it never leaves the device.
        if (!_owner.BusMasterEnabled) return;
        _owner.InterruptSink?.SignalMsi(address, data);
    }

    internal void ConfigWritten(int offset, int size)
    {
        int c = CapabilityOffset + ControlOffset;
        if (offset < c + 2 && offset + size > c) DeliverUnmaskedPending();
    }

    // Sends (and clears) the pending vectors that are no longer masked.
    private void DeliverUnmaskedPending()
    {
        Span<(ulong, uint)> batch = stackalloc (ulong, uint)[16];
        while (true)
        {
            int n = 0;
            lock (_lock)
            {
                if (!Enabled || FunctionMasked) return;
                for (int v = 0; v < VectorCount && n < batch.Length; v++)
                {
                    ulong bit = 1UL << (v & 63);
                    if ((_pending[v >> 6] & bit) == 0 || IsMaskedLocked(v)) continue;
                    _pending[v >> 6] &= ~bit;
                    batch[n++] = MessageLocked(v);
                }
            }
            for (int k = 0; k < n; k++) Send(batch[k].Item1, batch[k].Item2);
            if (n < batch.Length) return;
        }
    }

    // ---- saved state ---------------------------------------------------------------------------------------

    internal byte[] SaveTable() { lock (_lock) return (byte[])_table.Clone(); }

    internal byte[] SavePba()
    {
        lock (_lock)
        {
            var b = new byte[PbaLength];
            for (int i = 0; i < _pending.Length; i++) BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(i * 8), _pending[i]);
            return b;
        }
    }

    /// <summary>Why a saved table and PBA cannot be this capability's (null when they can); <paramref name="config"/> is the saved config space.</summary>
    internal string? Check(byte[]? table, byte[]? pba, byte[] config)
    {
        if (table == null || table.Length != TableLength) return $"saved MSI-X table is not {TableLength} bytes";
        if (pba == null || pba.Length != PbaLength) return $"saved MSI-X PBA is not {PbaLength} bytes";
        ushort control = BinaryPrimitives.ReadUInt16LittleEndian(config.AsSpan(CapabilityOffset + ControlOffset));
        bool delivering = (control & ControlEnable) != 0 && (control & ControlFunctionMask) == 0;
        for (int v = 0; v < VectorCount; v++)
        {
            var e = table.AsSpan(v * EntrySize, EntrySize);
            // The bits a guest cannot write (WriteTable clears them) are never set in a real table.
            if ((e[0] & 3) != 0 || (e[12] & ~VectorMasked) != 0 || e[13] != 0 || e[14] != 0 || e[15] != 0)
                return $"MSI-X vector {v} has reserved bits set";
            bool pending = (pba[v >> 3] & (1 << (v & 7))) != 0;
            // A pending vector that is not masked would have been sent when it was unmasked.
            if (pending && delivering && (e[12] & VectorMasked) == 0)
                return $"MSI-X vector {v} is pending but not masked";
        }
        for (int bit = VectorCount; bit < PbaLength * 8; bit++)
            if ((pba[bit >> 3] & (1 << (bit & 7))) != 0) return $"MSI-X PBA has bit {bit} set beyond {VectorCount} vectors";
        return null;
    }

    /// <summary>Applies a table and PBA that passed <see cref="Check"/> (sends nothing).</summary>
    internal void Restore(byte[] table, byte[] pba)
    {
        lock (_lock)
        {
            table.CopyTo(_table, 0);
            for (int i = 0; i < _pending.Length; i++) _pending[i] = BinaryPrimitives.ReadUInt64LittleEndian(pba.AsSpan(i * 8));
        }
    }

    /// <summary>A read of the vector table at <paramref name="offset"/> from its start.</summary>
    public ulong ReadTable(ulong offset, int size)
    {
        if (offset + (ulong)size > (ulong)_table.Length) return 0;
        lock (_lock) return ReadLe(_table, (int)offset, size);
    }

    public void WriteTable(ulong offset, int size, ulong value)
    {
        if (offset + (ulong)size > (ulong)_table.Length) return;
        lock (_lock)
        {
            for (int k = 0; k < size; k++)
            {
                int o = (int)offset + k;
                byte b = (byte)(value >> (8 * k));
                switch (o % EntrySize)
                {
                    case 0: b &= 0xFC; break;            // Message Address is dword-aligned
                    case 12: b &= (byte)VectorMasked; break; // only the mask bit of Vector Control is defined
                    case 13: case 14: case 15: b = 0; break;
                }
                _table[o] = b;
            }
        }
        DeliverUnmaskedPending();
    }

    /// <summary>The pending-bit array is read-only.</summary>
    public ulong ReadPba(ulong offset, int size)
    {
        if (offset + (ulong)size > (ulong)PbaLength) return 0;
        lock (_lock)
        {
            Span<byte> b = stackalloc byte[_pending.Length * 8];
            for (int i = 0; i < _pending.Length; i++) BinaryPrimitives.WriteUInt64LittleEndian(b[(i * 8)..], _pending[i]);
            return ReadLe(b, (int)offset, size);
        }
    }

    private static ulong ReadLe(ReadOnlySpan<byte> s, int offset, int size)
    {
        ulong v = 0;
        for (int k = 0; k < size; k++) v |= (ulong)s[offset + k] << (8 * k);
        return v;
    }
}
