using Dirigent.Machine.Memory;

namespace Dirigent.Devices.Firmware;

/// <summary>
/// The BIOS ROM and the i440FX shadow RAM of 0xC0000-0xFFFFF. The ROM image (QEMU's bios-256k.bin) sits at the top of
/// 4 GiB (<see cref="RomBase"/>), and its last 128 KiB also appear at 0xE0000-0xFFFFF. The host bridge's PAM registers
/// (config 0x59-0x5F, see <see cref="PamFirst"/>) choose per segment whether reads see that ROM (or, below
/// 0xE0000, the empty expansion-ROM space) or the RAM behind it: bit 0 (bit 4 for the upper segment of a register)
/// enables RAM reads, bit 1 (bit 5) RAM writes. The guest's memory at those addresses always holds what reads see;
/// the bytes of the other side wait in a buffer here and are swapped in when the read bit changes, so SeaBIOS's
/// make_bios_writable (RAM on, copy the image from 0xFFF00000 up) behaves as on QEMU. Write protection is not
/// enforced: a write to a segment whose write bit is clear still lands in what reads see (the software CPU has no
/// per-page write hook; SeaBIOS never relies on the drop).
/// </summary>
public sealed partial class BiosShadow
{
    public const ulong ShadowBase = 0xC_0000, ShadowEnd = 0x10_0000, AliasBase = 0xE_0000, AliasSize = 0x2_0000;
    /// <summary>PAM0 (0x59) holds 0xF0000-0xFFFFF in its upper nibble; PAM1..PAM6 two 16 KiB segments each from 0xC0000.</summary>
    public const int PamFirst = 0x59, PamCount = 7;
    /// <summary>Segments: index 0 is 0xF0000 (64 KiB), 1..12 the 16 KiB ones from 0xC0000.</summary>
    public const int SegmentCount = 13;

    private readonly GuestMemory _mem;
    private readonly byte[] _rom;
    private readonly byte[] _pam = new byte[PamCount];
    /// <summary>Per segment, the bytes reads do not see now (RAM while ROM is read, nothing while RAM is read).</summary>
    private readonly byte[]?[] _hidden = new byte[SegmentCount][];
    private readonly object _lock = new();

    public ulong RomBase { get; }
    public ReadOnlyMemory<byte> Rom => _rom;

    /// <param name="rom">The BIOS image: a multiple of 64 KiB, 128 KiB .. 16 MiB (bios-256k.bin is 256 KiB).</param>
    public BiosShadow(GuestMemory mem, byte[] rom)
    {
        if (rom.Length < (int)AliasSize || rom.Length > 16 << 20 || rom.Length % 0x1_0000 != 0)
            throw new ArgumentException($"a BIOS image is 128 KiB to 16 MiB in 64 KiB steps, this one is {rom.Length} bytes");
        _mem = mem;
        _rom = rom;
        RomBase = 0x1_0000_0000UL - (ulong)rom.Length;
        mem.AddRom(RomBase, (ulong)rom.Length);
        Load();
    }

    /// <summary>The guest-physical range of segment <paramref name="seg"/>.</summary>
    public static (ulong Base, int Size) Segment(int seg) =>
        seg == 0 ? (0xF_0000, 0x1_0000) : (ShadowBase + (ulong)(seg - 1) * 0x4000, 0x4000);

    /// <summary>The segment's 2-bit PAM field: bit 0 RAM reads, bit 1 RAM writes.</summary>
    private int Field(int seg) => FieldOf(_pam, seg);

    private static int FieldOf(byte[] pam, int seg)
    {
        if (seg == 0) return pam[0] >> 4 & 3;
        int reg = 1 + (seg - 1) / 2;
        return (seg - 1) % 2 == 0 ? pam[reg] & 3 : pam[reg] >> 4 & 3;
    }

    /// <summary>What reads of the segment see while its RAM is off: the ROM's alias, or nothing (zeros) below it.</summary>
    private void RomView(int seg, Span<byte> dst)
    {
        var (b, size) = Segment(seg);
        if (b < AliasBase) { dst.Clear(); return; }
        _rom.AsSpan(_rom.Length - (int)AliasSize + (int)(b - AliasBase), size).CopyTo(dst);
    }

    /// <summary>Power-on: the ROM image written again (it is not saved in snapshots), all PAM fields 0, reads see ROM.</summary>
    private void Load()
    {
        lock (_lock)
        {
            _mem.Write(RomBase, _rom);
            Array.Clear(_pam);
            for (int seg = 0; seg < SegmentCount; seg++)
            {
                var (b, size) = Segment(seg);
                var view = new byte[size];
                RomView(seg, view);
                _mem.Write(b, view);
                _hidden[seg] = new byte[size];
            }
        }
    }

    /// <summary>PAM register <paramref name="index"/> (0..6) as the host bridge holds it.</summary>
    public byte Pam(int index) { lock (_lock) return _pam[index]; }

    /// <summary>The host bridge's config write to PAM register <paramref name="index"/> (0..6).</summary>
    public void SetPam(int index, byte value)
    {
        if ((uint)index >= PamCount) return;
        lock (_lock)
        {
            var before = new int[SegmentCount];
            for (int seg = 0; seg < SegmentCount; seg++) before[seg] = Field(seg);
            _pam[index] = (byte)(value & 0x33);
            for (int seg = 0; seg < SegmentCount; seg++)
            {
                bool wasRam = (before[seg] & 1) != 0, isRam = (Field(seg) & 1) != 0;
                if (wasRam == isRam) continue;
                var (b, size) = Segment(seg);
                if (isRam)
                {
                    // ROM → RAM: the RAM's bytes come back into view.
                    _mem.Write(b, _hidden[seg]!);
                    _hidden[seg] = null;
                }
                else
                {
                    // RAM → ROM: keep the RAM's bytes aside, show the ROM.
                    var ram = new byte[size];
                    _mem.Read(b, ram);
                    _hidden[seg] = ram;
                    var view = new byte[size];
                    RomView(seg, view);
                    _mem.Write(b, view);
                }
            }
        }
    }
}
