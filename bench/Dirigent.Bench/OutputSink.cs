namespace Dirigent.Bench;

/// <summary>A write-only stream a bench hands the VM as its serial output: subclasses see each write.</summary>
internal abstract class OutputSink : Stream
{
    public abstract override void Write(byte[] buffer, int offset, int count);
    public override void WriteByte(byte value) => Write([value], 0, 1);
    public override void Flush() { }
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => 0;
    public override long Position { get => 0; set { } }
    public override int Read(byte[] buffer, int offset, int count) => 0;
    public override long Seek(long offset, SeekOrigin origin) => 0;
    public override void SetLength(long value) { }
}
