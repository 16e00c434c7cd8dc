namespace Dirigent.Tests.Infrastructure;

/// <summary>A stream a test hands a VM as its stdout: subclasses see each write; everything else is unsupported.</summary>
public abstract class WriteOnlyStream : Stream
{
    public abstract override void Write(byte[] buffer, int offset, int count);
    public override void Flush() { }
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
