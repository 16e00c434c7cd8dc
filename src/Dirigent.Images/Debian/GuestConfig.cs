using System.Text;
using System.Text.RegularExpressions;

namespace Dirigent.Images.Debian;

/// <summary>
/// The configuration files we write into the Debian root: GRUB's menu, fstab, hostname, the network and the
/// first-boot SSH host key unit. Pure functions of their inputs, so tests check them without building an image.
/// </summary>
public static partial class GuestConfig
{
    /// <summary>
    /// Kernel command line: the serial console (the only console a Dirigent VM has), and no crypto self-tests at boot
    /// (they are most of the stock kernel's boot time on the software CPU; they test the kernel, not the host).
    /// </summary>
    public static string KernelArgs(Guid rootUuid) =>
        $"root=UUID={rootUuid} ro console=ttyS0,115200n8 cryptomgr.notests";

    /// <summary>
    /// grub.cfg: GRUB talks on COM1 at 115200 (and on the screen where there is one), boots after one second.
    /// /vmlinuz and /initrd.img are the symlinks Debian's kernel packages keep pointing at the newest kernel, so a
    /// kernel upgrade inside the guest boots without regenerating this file. Root is found by filesystem UUID.
    /// </summary>
    public static string GrubCfg(Guid rootUuid, string hostname) => $$"""
        # Written by `dirigent image build debian`; Debian's update-grub is not installed in this image.
        serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
        terminal_input serial console
        terminal_output serial console
        set timeout=1
        set default=0
        search --no-floppy --fs-uuid --set=root {{rootUuid}}
        menuentry 'Debian GNU/Linux ({{hostname}})' {
            linux /vmlinuz {{KernelArgs(rootUuid)}}
            initrd /initrd.img
        }
        menuentry 'Debian GNU/Linux ({{hostname}}, previous kernel)' {
            linux /vmlinuz.old {{KernelArgs(rootUuid)}}
            initrd /initrd.img.old
        }

        """;

    /// <summary>The prefix core.img searches for grub.cfg and modules: partition 1 of the boot disk.</summary>
    public const string GrubPrefix = "(hd0,msdos1)/boot/grub";

    /// <summary>Modules built into core.img, so GRUB needs nothing from the filesystem but grub.cfg: the BIOS
    /// disk, the partition table, ext4, serial, the menu and the Linux loader.</summary>
    public static readonly string[] GrubModules =
    [
        "biosdisk", "part_msdos", "ext2", "search", "search_fs_uuid", "serial", "terminal", "normal", "linux",
        "gzio", "echo", "test", "configfile",
    ];

    public static string Fstab(Guid rootUuid) => $"""
        # <file system> <mount point> <type> <options> <dump> <pass>
        UUID={rootUuid} / ext4 errors=remount-ro 0 1

        """;

    public static string Hosts(string hostname) => $"""
        127.0.0.1	localhost
        127.0.1.1	{hostname}
        ::1	localhost ip6-localhost ip6-loopback
        ff02::1	ip6-allnodes
        ff02::2	ip6-allrouters

        """;

    /// <summary>Path of <see cref="NetworkUnit"/> inside the image.</summary>
    public const string NetworkUnitPath = "etc/systemd/network/20-dirigent-dhcp.network";

    /// <summary>systemd-networkd: DHCP (v4 and v6) on Ethernet NICs, whichever naming scheme the kernel picks.</summary>
    public const string NetworkUnit = """
        # Written by `dirigent image build debian`: DHCP on the VM's Ethernet NIC.
        [Match]
        Type=ether
        Name=en* eth*

        [Network]
        DHCP=yes

        """;

    public const string SshKeygenUnitName = "dirigent-ssh-keygen.service";

    /// <summary>
    /// The image carries no SSH host keys (every clone would share them): this unit makes them on first boot,
    /// before ssh.service, whose ExecStartPre (sshd -t) fails without them.
    /// </summary>
    public const string SshKeygenUnit = """
        [Unit]
        Description=Generate SSH host keys on first boot (dirigent image)
        ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
        Before=ssh.service

        [Service]
        Type=oneshot
        ExecStart=/usr/bin/ssh-keygen -A
        RemainAfterExit=yes

        [Install]
        WantedBy=multi-user.target

        """;

    /// <summary>The fw_cfg file a hypervisor puts the guest's hostname in: Dirigent's daemon gives each VM made from
    /// an image its name this way (<c>dirigent run --fw-cfg name=opt/org.dirigent/hostname,string=NAME</c>; QEMU:
    /// <c>-fw_cfg name=opt/org.dirigent/hostname,string=NAME</c>).</summary>
    public const string HostnameFwCfgName = "opt/org.dirigent/hostname";

    public const string HostnameUnitName = "dirigent-hostname.service", HostnameScriptPath = "usr/local/sbin/dirigent-hostname";

    /// <summary>
    /// Sets the hostname from <see cref="HostnameFwCfgName"/> when the hypervisor gives one (Linux shows fw_cfg files
    /// under /sys/firmware/qemu_fw_cfg once the qemu_fw_cfg module has bound to the DSDT's QEMU0002 device), so
    /// linked clones of one image get their VM's name; without it the image's /etc/hostname stays. An invalid name
    /// is ignored with a log line: the guest trusts the hypervisor, but not to break /etc/hosts.
    /// </summary>
    public const string HostnameScript = """
        #!/bin/sh
        # Written by `dirigent image build debian` (dirigent-hostname.service): the hostname from the hypervisor's
        # fw_cfg file opt/org.dirigent/hostname, if there is one.
        f=/sys/firmware/qemu_fw_cfg/by_name/opt/org.dirigent/hostname/raw
        modprobe -q qemu_fw_cfg 2>/dev/null || true
        [ -r "$f" ] || exit 0
        name=$(head -c 64 "$f")
        case "$name" in
          ''|-*|*-|*[!A-Za-z0-9-]*) echo "dirigent-hostname: ignoring an invalid hostname from fw_cfg" >&2; exit 0 ;;
        esac
        [ ${#name} -le 63 ] || exit 0
        if [ "$(cat /etc/hostname 2>/dev/null)" != "$name" ]; then
          echo "$name" > /etc/hostname
          sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1\t$name/" /etc/hosts
        fi
        hostname "$name"

        """;

    /// <summary>Runs <see cref="HostnameScript"/> early: after the root is writable, before the network and the
    /// login prompts (getty units come after systemd-user-sessions), so the prompt already shows the new name.</summary>
    public const string HostnameUnit = """
        [Unit]
        Description=Hostname from the hypervisor (fw_cfg opt/org.dirigent/hostname)
        DefaultDependencies=no
        After=local-fs.target systemd-remount-fs.service
        Before=sysinit.target network-pre.target systemd-networkd.service systemd-user-sessions.service
        Wants=network-pre.target

        [Service]
        Type=oneshot
        ExecStart=/usr/local/sbin/dirigent-hostname
        RemainAfterExit=yes

        [Install]
        WantedBy=sysinit.target

        """;

    /// <summary>A hostname by RFC 1123: letters, digits and hyphens, 1–63 characters, not starting or ending with '-'.</summary>
    public static bool IsValidHostname(string name) => HostnameRegex().IsMatch(name);

    /// <summary>
    /// The default hostname from the output file name ("web-1.qcow2" → "web-1"): lower-cased, other characters
    /// become '-', trimmed to 63; "debian" when nothing is left.
    /// </summary>
    public static string HostnameFromPath(string outPath)
    {
        string name = Path.GetFileName(outPath);
        int dot = name.IndexOf('.');
        if (dot > 0) name = name[..dot];
        var sb = new StringBuilder();
        foreach (char c in name.ToLowerInvariant())
            sb.Append(c is >= 'a' and <= 'z' or >= '0' and <= '9' ? c : '-');
        string h = sb.ToString().Trim('-');
        if (h.Length > 63) h = h[..63].TrimEnd('-');
        return h.Length == 0 ? "debian" : h;
    }

    /// <summary>Checks an authorized_keys file's content: each non-comment line must name a key type we know.</summary>
    public static void ValidateSshKeys(string text, string file)
    {
        var lines = text.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        if (lines.Count == 0) throw new ImageBuildException($"--ssh-key {file} contains no public key");
        foreach (var l in lines)
            if (!SshKeyRegex().IsMatch(l))
                throw new ImageBuildException($"--ssh-key {file} is not an OpenSSH public key (a line starting with ssh-ed25519, ssh-rsa, ecdsa-sha2-...): '{(l.Length > 40 ? l[..40] + "…" : l)}'");
    }

    /// <summary>A random root password: 20 characters from an alphabet without look-alikes (about 110 bits).</summary>
    public static string RandomPassword()
    {
        const string alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        return System.Security.Cryptography.RandomNumberGenerator.GetString(alphabet, 20);
    }

    [GeneratedRegex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    private static partial Regex HostnameRegex();
    // Options (from="...",no-pty) may precede the key type in authorized_keys.
    [GeneratedRegex(@"^(\S+\s+)?(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)\s+[A-Za-z0-9+/=]+")]
    private static partial Regex SshKeyRegex();
}
