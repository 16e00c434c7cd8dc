using Dirigent.Cli;

namespace Dirigent.Tests.Introspection;

public class TraceOptionTests
{
    [Fact]
    public void ParsesProcessAndOutput()
    {
        Assert.Equal(new TraceOption(null, null), TraceOption.Parse("syscalls"));
        Assert.Equal(new TraceOption("cat", "/tmp/t.jsonl"), TraceOption.Parse("syscalls,process=cat,output=/tmp/t.jsonl"));
    }

    [Theory]
    [InlineData("files", "must be syscalls")]
    [InlineData("syscalls,pid=3", "unknown item 'pid=3'")]
    [InlineData("syscalls,process=", "unknown item 'process='")]
    [InlineData("syscalls,process=a,process=b", "given twice")]
    [InlineData("syscalls,process=averyveryverylongname", "longer than a Linux process name")]
    public void RejectsBadSpecsWithOneLine(string spec, string message)
    {
        var e = Assert.Throws<FormatException>(() => TraceOption.Parse(spec));
        Assert.Contains(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
