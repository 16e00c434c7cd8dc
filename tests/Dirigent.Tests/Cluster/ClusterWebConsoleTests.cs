using System.Net;
using Dirigent.Tests.Daemon.Integration;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Dirigent.Tests.Cluster;

/// <summary>
/// The web console in cluster mode: the VM list and a VM's page name the host each VM is placed on (the one-host list
/// keeps its columns, as `vm list` does), and either host's console shows the VMs of both. Debian's chromium, headless.
/// </summary>
[Trait("Category", "Browser")]
[Collection(nameof(ClusterPair))]
public sealed class ClusterWebConsoleTests(ClusterPairFixture pair)
{
    private const string Chromium = "/usr/bin/chromium";
    private const float Wait = 240_000;

    [SkippableFact]
    public async Task EachHostsConsoleNamesTheHostOfEveryVm()
    {
        Skip.IfNot(File.Exists(Chromium), $"{Chromium} is not installed (apt-get install chromium), so the browser tests cannot run");
        var rig = await pair.RigAsync();
        var (n1, n2) = (rig.Hosts[0], rig.Hosts[1]);
        Assert.True(n2.TcpBase != null, "a cluster daemon serves HTTP on its advertised address:\n" + rig.Logs());
        await n1.CreateTinyVmAsync("web-on-n1", pin: "n1");
        await n1.CreateTinyVmAsync("web-on-n2", pin: "n2");
        await rig.WaitAsync(async () => (await n1.GetAsync("/api/v1/vms/web-on-n2")).Str("host") == "n2"
                                        && (await n1.GetAsync("/api/v1/vms/web-on-n1")).Str("host") == "n1", "both VMs placed on their pinned hosts");
        string token = (await n1.PostAsync("/api/v1/tokens", new { name = "web-cluster", rights = new[] { "admin" } }, HttpStatusCode.Created))["secret"]!.GetValue<string>();

        using var pw = await Playwright.CreateAsync();
        await using var browser = await pw.Chromium.LaunchAsync(new() { ExecutablePath = Chromium, Headless = true });
        var page = await browser.NewPageAsync();
        page.SetDefaultTimeout(Wait);
        SetDefaultExpectTimeout(Wait);
        var pageErrors = new List<string>();
        page.PageError += (_, e) => { lock (pageErrors) pageErrors.Add(e); };

        // Logged in on n2 with a token made through n1: the store is the cluster's.
        await page.GotoAsync(n2.TcpBase + "/");
        await page.GetByLabel("API token").FillAsync(token);
        await page.Keyboard.PressAsync("Enter");
        await Expect(page.GetByRole(AriaRole.Heading, new() { Name = "Virtual machines" })).ToBeVisibleAsync();
        await Expect(page.GetByRole(AriaRole.Columnheader, new() { Name = "Host" })).ToBeVisibleAsync();
        await Expect(page.Locator("tr[data-vm='web-on-n1'] td[data-label='Host']")).ToHaveTextAsync("n1");
        await Expect(page.Locator("tr[data-vm='web-on-n2'] td[data-label='Host']")).ToHaveTextAsync("n2");

        // A VM's page names its host among the details.
        await page.GetByRole(AriaRole.Link, new() { Name = "web-on-n1", Exact = true }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Heading, new() { Name = "web-on-n1", Exact = true })).ToBeVisibleAsync();
        await Expect(page.Locator("dl.details dt:text-is('Host') + dd")).ToHaveTextAsync("n1");
        lock (pageErrors) Assert.Empty(pageErrors);

        foreach (string vm in new[] { "web-on-n1", "web-on-n2" })
        {
            var (status, body, _) = await n1.SendAsync(HttpMethod.Delete, $"/api/v1/vms/{vm}");
            Assert.True(status is HttpStatusCode.NoContent or HttpStatusCode.OK, $"DELETE {vm}: {(int)status} {body?.ToJsonString()}");
        }
    }
}
