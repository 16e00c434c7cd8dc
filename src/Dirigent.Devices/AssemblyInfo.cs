// Devices: one folder per device family, one device per file. Devices see the machine model (buses, memory,
// interrupt lines, the virtual clock) and never an accelerator.
