using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Bench;

/// <summary>
/// Bare-metal benchmark guests: a Multiboot v1 image (a.out kludge, so QEMU's -kernel loads the flat binary) whose
/// 32-bit entry builds identity page tables, enters long mode and runs one workload, then writes 0 to the
/// isa-debug-exit port 0xF4. The same bytes run on Dirigent and on QEMU TCG, so the instruction count is the same.
/// </summary>
public static class CpuGuests
{
    public const ulong LoadAddr = 0x10_0000;
    public const ulong SrcBuf = 0x40_0000, DstBuf = 0x50_0000;
    public const int BufBytes = 64 * 1024;

    public sealed record Guest(string Name, byte[] Image, ulong Entry32, ulong Entry64, string Description);

    // Image layout (offsets from LoadAddr): Multiboot header 0x00, GDT 0x20, GDTR 0x40, 32-bit entry 0x80,
    // 64-bit code 0x400. Fixed offsets keep the 32-bit code free of label arithmetic Iced cannot do there.
    private const ulong GdtOff = 0x20, GdtrOff = 0x40, Entry32Off = 0x80, Entry64Off = 0x400;

    public static Guest Build(string workload, long iterations)
    {
        var img = new byte[Entry64Off];
        const uint magic = 0x1BADB002, flags = 0x0001_0000;
        uint[] hdr = [magic, flags, unchecked(0u - magic - flags), (uint)LoadAddr, (uint)LoadAddr, 0, 0, (uint)(LoadAddr + Entry32Off)];
        for (int k = 0; k < hdr.Length; k++) BitConverter.TryWriteBytes(img.AsSpan(4 * k), hdr[k]);
        ulong[] gdt = [0, 0x00CF_9B00_0000_FFFF, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
        for (int k = 0; k < gdt.Length; k++) BitConverter.TryWriteBytes(img.AsSpan((int)GdtOff + 8 * k), gdt[k]);
        BitConverter.TryWriteBytes(img.AsSpan((int)GdtrOff), (ushort)0x1F);
        BitConverter.TryWriteBytes(img.AsSpan((int)GdtrOff + 2), (uint)(LoadAddr + GdtOff));

        var a = new Assembler(32);
        a.cli();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000: identity-map the first GiB with 2 MiB pages.
        a.mov(edi, 0x1000);
        a.xor(eax, eax);
        a.mov(ecx, 0x3000 / 4);
        var clr = a.CreateLabel();
        a.Label(ref clr);
        a.mov(__dword_ptr[edi], eax);
        a.add(edi, 4);
        a.dec(ecx);
        a.jnz(clr);
        a.mov(__dword_ptr[0x1000], 0x2003);
        a.mov(__dword_ptr[0x2000], 0x3003);
        a.mov(edi, 0x3000);
        a.mov(eax, 0x83);
        a.mov(ecx, 512);
        var pd = a.CreateLabel();
        a.Label(ref pd);
        a.mov(__dword_ptr[edi], eax);
        a.add(eax, 0x20_0000);
        a.add(edi, 8);
        a.dec(ecx);
        a.jnz(pd);
        a.lgdt(__fword_ptr[(uint)(LoadAddr + GdtrOff)]);
        a.mov(eax, cr4);
        a.or(eax, 0x620); // PAE | OSFXSR | OSXMMEXCPT
        a.mov(cr4, eax);
        a.mov(eax, 0x1000);
        a.mov(cr3, eax);
        a.mov(ecx, 0xC000_0080);
        a.rdmsr();
        a.or(eax, 0x100); // LME
        a.wrmsr();
        a.mov(eax, cr0);
        a.or(eax, unchecked((int)0x8000_0001));
        a.mov(cr0, eax);
        a.jmp(0x10, (uint)(LoadAddr + Entry64Off));
        var code32 = Assemble(a, LoadAddr + Entry32Off);
        if (Entry32Off + (ulong)code32.Length > Entry64Off) throw new InvalidOperationException("32-bit part too long");
        code32.CopyTo(img, (int)Entry32Off);

        var b = new Assembler(64);
        b.mov(esp, 0x8_0000);
        EmitWorkload64(b, workload, iterations);
        b.xor(eax, eax);
        b.@out(0xF4, al);
        var spin = b.CreateLabel();
        b.Label(ref spin);
        b.hlt();
        b.jmp(spin);
        var code64 = Assemble(b, LoadAddr + Entry64Off);
        return new Guest(workload, [.. img, .. code64], LoadAddr + Entry32Off, LoadAddr + Entry64Off, Describe(workload, iterations));
    }

    private static byte[] Assemble(Assembler a, ulong ip)
    {
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), ip);
        return ms.ToArray();
    }

    private static string Describe(string w, long n) => w switch
    {
        "intloop" => $"integer loop (add/xor/dec/jnz) x {n}",
        "memcpy" => $"64 KiB qword copy loop x {n}",
        "hash" => $"FNV-1a over 64 KiB x {n}",
        _ => w,
    };

    private static void EmitWorkload64(Assembler a, string workload, long n)
    {
        switch (workload)
        {
            case "null":
                break;
            case "intloop":
            {
                var l = a.CreateLabel();
                a.mov(rcx, n);
                a.xor(eax, eax);
                a.Label(ref l);
                a.add(eax, ecx);
                a.xor(ebx, eax);
                a.dec(rcx);
                a.jnz(l);
                break;
            }
            case "memcpy":
            {
                var outer = a.CreateLabel();
                var inner = a.CreateLabel();
                a.mov(r8, n);
                a.Label(ref outer);
                a.mov(esi, (uint)SrcBuf);
                a.mov(edi, (uint)DstBuf);
                a.mov(ecx, BufBytes / 8);
                a.Label(ref inner);
                a.mov(rax, __qword_ptr[rsi]);
                a.mov(__qword_ptr[rdi], rax);
                a.add(rsi, 8);
                a.add(rdi, 8);
                a.dec(ecx);
                a.jnz(inner);
                a.dec(r8);
                a.jnz(outer);
                break;
            }
            case "hash":
            {
                var outer = a.CreateLabel();
                var inner = a.CreateLabel();
                a.mov(r8, n);
                a.mov(eax, 0x811C9DC5);
                a.Label(ref outer);
                a.mov(esi, (uint)SrcBuf);
                a.mov(ecx, BufBytes);
                a.Label(ref inner);
                a.movzx(edx, __byte_ptr[rsi]);
                a.xor(eax, edx);
                a.imul(eax, eax, 16777619);
                a.inc(rsi);
                a.dec(ecx);
                a.jnz(inner);
                a.dec(r8);
                a.jnz(outer);
                break;
            }
            default: throw new ArgumentException($"unknown workload {workload}");
        }
    }
}
