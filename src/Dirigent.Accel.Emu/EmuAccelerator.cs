using Dirigent.Accel.Emu.Core;
using Dirigent.Machine;
using Dirigent.Machine.Accel;

namespace Dirigent.Accel.Emu;

/// <summary>The pure C# x86-64 accelerator: runs on any host, lets us trace and inspect guests.</summary>
public sealed class EmuAccelerator : IAccelerator
{
    private readonly MachineModel _vm;
    private readonly CodeCache _cache;
    private readonly List<Cpu> _cpus = new();

    public EmuAccelerator(MachineModel vm)
    {
        _vm = vm;
        _cache = new CodeCache(vm.Memory);
    }

    public string Name => "emu";

    public IVcpu CreateVcpu(int index)
    {
        var c = new Cpu(_vm, _cache, index);
        _cpus.Add(c);
        return c;
    }

    // TODO(lifecycle): write tracking through the soft TLB.
    public void SetDirtyLogging(bool enabled) => throw new NotImplementedException("dirty logging on the software CPU");
    public void CollectDirtyPages() => throw new NotImplementedException("dirty logging on the software CPU");

    public long BlocksTranslated => _cache.BlocksTranslated;
    public long BlocksInvalidated => _cache.BlocksInvalidated;

    public void Dispose()
    {
        foreach (var c in _cpus) c.Dispose();
        _cpus.Clear();
    }
}
