// The VMM host process: assembles a machine from a configuration (memory, devices, accelerator, loaders), runs its
// vCPU threads, connects the console, and builds the default guest image.
