using System.Text;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Dirigent.Bench;

/// <summary>
/// `randio r|w COUNT`: a static x86-64 Linux ELF (assembled with Iced, no libc) that does COUNT 4 KiB preads or
/// pwrites with O_DIRECT at xorshift-random 4 KiB-aligned offsets in the first 64 MiB of /dev/vda and exits 0, or
/// exits 1 at the first short transfer. busybox has no fio, and a shell loop of dd would time process start-up,
/// not the disk. Shipped to the guest in a second initramfs archive (the kernel unpacks concatenated archives).
/// </summary>
public static class RandIoTool
{
    public const string GuestPath = "bin/randio";
    private const ulong Base = 0x40_0000;
    private const ulong DataOff = 0x1000;        // "/dev/vda\0" lives here
    private const ulong BufOff = 0x2000;         // 4 KiB-aligned I/O buffer (bss)
    private const int Span4K = 64 * 1024 * 1024 / 4096;

    public static byte[] BuildElf()
    {
        const int sysPread = 17, sysPwrite = 18, sysOpen = 2, sysExit = 60;
        const int oRdwr = 2, oDirect = 0x4000;
        var a = new Assembler(64);
        var fail = a.CreateLabel();
        var loop = a.CreateLabel();
        var parse = a.CreateLabel();
        var parsed = a.CreateLabel();
        var doRead = a.CreateLabel();
        var next = a.CreateLabel();

        // argv[1][0] == 'w' selects writes (r12 = syscall number); argv[2] is COUNT in decimal (r13).
        a.cmp(__qword_ptr[rsp], 3);
        a.jb(fail);
        a.mov(rax, __qword_ptr[rsp + 16]);
        a.mov(r12d, sysPread);
        a.cmp(__byte_ptr[rax], (byte)'w');
        a.jne(doRead);
        a.mov(r12d, sysPwrite);
        a.Label(ref doRead);
        a.mov(rsi, __qword_ptr[rsp + 24]);
        a.xor(r13d, r13d);
        a.Label(ref parse);
        a.movzx(eax, __byte_ptr[rsi]);
        a.sub(eax, '0');
        a.cmp(eax, 9);
        a.ja(parsed);
        a.imul(r13, r13, 10);
        a.add(r13, rax);
        a.inc(rsi);
        a.jmp(parse);
        a.Label(ref parsed);

        a.mov(eax, sysOpen);
        a.mov(edi, (uint)(Base + DataOff));
        a.mov(esi, oRdwr | oDirect);
        a.xor(edx, edx);
        a.syscall();
        a.test(rax, rax);
        a.js(fail);
        a.mov(r14, rax);                        // fd
        a.mov(r15, 0x9E3779B97F4A7C15UL);      // xorshift64 state

        a.Label(ref loop);
        a.test(r13, r13);
        a.jz(next);
        a.mov(rax, r15);
        a.shl(rax, 13); a.xor(r15, rax);
        a.mov(rax, r15);
        a.shr(rax, 7); a.xor(r15, rax);
        a.mov(rax, r15);
        a.shl(rax, 17); a.xor(r15, rax);
        a.mov(r10, r15);
        a.and(r10, Span4K - 1);
        a.shl(r10, 12);                         // offset
        a.mov(eax, r12d);
        a.mov(rdi, r14);
        a.mov(esi, (uint)(Base + BufOff));
        a.mov(edx, 4096);
        a.syscall();
        a.cmp(rax, 4096);
        a.jne(fail);
        a.dec(r13);
        a.jmp(loop);

        a.Label(ref next);
        a.mov(eax, sysExit);
        a.xor(edi, edi);
        a.syscall();
        a.Label(ref fail);
        a.mov(eax, sysExit);
        a.mov(edi, 1);
        a.syscall();

        const ulong codeOff = 0x100;            // after the ELF and program headers
        var w = new CodeWriterImpl();
        a.Assemble(w, Base + codeOff);
        byte[] code = w.ToArray();
        if (codeOff + (ulong)code.Length > DataOff) throw new InvalidOperationException("randio code too long");

        var file = new byte[DataOff + 0x10];
        Encoding.ASCII.GetBytes("/dev/vda\0").CopyTo(file, (int)DataOff);
        code.CopyTo(file, (int)codeOff);
        var h = file.AsSpan();
        // ELF64 header (System V ABI): executable, x86-64, one PT_LOAD covering the file plus the bss buffer.
        "\x7F"u8.CopyTo(h); "ELF"u8.CopyTo(h[1..]);
        h[4] = 2; h[5] = 1; h[6] = 1;
        BitConverter.TryWriteBytes(h[16..], (ushort)2);          // e_type ET_EXEC
        BitConverter.TryWriteBytes(h[18..], (ushort)62);         // e_machine EM_X86_64
        BitConverter.TryWriteBytes(h[20..], 1u);                 // e_version
        BitConverter.TryWriteBytes(h[24..], Base + codeOff);     // e_entry
        BitConverter.TryWriteBytes(h[32..], 64UL);               // e_phoff
        BitConverter.TryWriteBytes(h[52..], (ushort)64);         // e_ehsize
        BitConverter.TryWriteBytes(h[54..], (ushort)56);         // e_phentsize
        BitConverter.TryWriteBytes(h[56..], (ushort)1);          // e_phnum
        var ph = h[64..];
        BitConverter.TryWriteBytes(ph, 1u);                      // PT_LOAD
        BitConverter.TryWriteBytes(ph[4..], 7u);                 // RWX
        BitConverter.TryWriteBytes(ph[8..], 0UL);                // p_offset
        BitConverter.TryWriteBytes(ph[16..], Base);              // p_vaddr
        BitConverter.TryWriteBytes(ph[24..], Base);              // p_paddr
        BitConverter.TryWriteBytes(ph[32..], (ulong)file.Length);        // p_filesz
        BitConverter.TryWriteBytes(ph[40..], BufOff + 0x1000);           // p_memsz
        BitConverter.TryWriteBytes(ph[48..], 0x1000UL);                  // p_align
        return file;
    }

    private sealed class CodeWriterImpl : CodeWriter
    {
        private readonly List<byte> _bytes = new();
        public override void WriteByte(byte value) => _bytes.Add(value);
        public byte[] ToArray() => _bytes.ToArray();
    }
}
