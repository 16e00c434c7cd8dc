namespace Dirigent.Machine.Loaders;

/// <summary>A kernel or initrd image that cannot be loaded: unknown format, corrupt, or does not fit in guest RAM.</summary>
public sealed class LoaderException(string message) : Exception(message);
