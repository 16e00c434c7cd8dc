namespace Dirigent.Images;

/// <summary>
/// The default initramfs's /init. It mounts proc, sysfs and devtmpfs, loads the virtio modules in dependency
/// order, then either runs the command given on the kernel command line or starts a shell on the console, and
/// powers the machine off when that ends. The ACPI power button powers it off too (busybox acpid).
/// <para>Command line contract: <c>dirigent.cmd=BASE64</c>, where BASE64 is the standard base64 encoding (no line
/// breaks) of a shell script. It runs under <c>sh -c</c>; its exit status is printed as
/// <c>dirigent: exit status N</c>. Base64 keeps spaces and quotes out of the kernel command line.</para>
/// </summary>
public static class InitScript
{
    public const string CmdParameter = "dirigent.cmd";
    public const string ExitStatusPrefix = "dirigent: exit status ";

    /// <summary>Load order, dependencies first (from the modules' depends= info).</summary>
    public static readonly string[] ModuleOrder =
    [
        "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
        "virtio_blk", "failover", "net_failover", "virtio_net", "virtio-rng", "virtio_console", "evdev", "button",
    ];

    /// <summary>What the guest prints when the ACPI power button makes it power off.</summary>
    public const string PowerButtonLine = "dirigent: power button, powering off";

    /// <summary>The kernel command-line argument that makes /init run <paramref name="script"/> and power off.</summary>
    public static string CommandArgument(string script) =>
        $"{CmdParameter}={Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(script))}";

    public static string Text => $$"""
        #!/bin/sh
        export PATH=/bin:/sbin:/usr/bin:/usr/sbin
        /bin/busybox --install -s
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        mount -t devtmpfs devtmpfs /dev
        for m in {{string.Join(' ', ModuleOrder)}}; do
            [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
        done
        # The ACPI power button powers the guest off, as acpid does on a distribution: busybox acpid reads the
        # button's evdev node and runs /etc/acpi/PWRF/00000080 for KEY_POWER. It sleeps in poll() until then.
        mkdir -p /etc/acpi/PWRF
        printf '#!/bin/sh\necho "{{PowerButtonLine}}" >/dev/console\nsync\npoweroff -f\n' >/etc/acpi/PWRF/00000080
        chmod 755 /etc/acpi/PWRF/00000080
        acpid -l /dev/null
        set -f
        cmd=
        for arg in $(cat /proc/cmdline); do
            case "$arg" in {{CmdParameter}}=*) cmd="${arg#{{CmdParameter}}=}" ;; esac
        done
        set +f
        if [ -n "$cmd" ]; then
            script="$(echo "$cmd" | base64 -d)"
            sh -c "$script"
            echo "{{ExitStatusPrefix}}$?"
        else
            echo "dirigent: $(uname -r), shell on the console; exit powers off"
            setsid cttyhack sh
        fi
        sync
        poweroff -f
        """ + "\n";
}
