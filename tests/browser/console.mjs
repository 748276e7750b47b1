// Drives Debian's Chromium through the console the way an administrator would, and
// prints what it saw as one JSON object; the Rust test (crates/sipward/tests/it/
// console.rs) makes the assertions. Screenshots go to ARTIFACTS.
//
//   BASE=http://127.0.0.1:PORT NAME=admin PASSWORD=... WEAK=4001,4002 STRONG=4003
//   XSS=4009 NEW=4200 ARTIFACTS=dir node console.mjs
import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = process.env;
const base = env.BASE;
const [weakA, weakB] = env.WEAK.split(",");
const seen = { dialogs: 0 };

const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "sw-chromium-")), {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
  ],
});
const page = context.pages()[0] || (await context.newPage());
page.on("dialog", async (d) => { seen.dialogs += 1; await d.dismiss(); });
// axe-core, evaluated in the page through the DevTools protocol (the console's CSP lets
// no injected script tag run, and it must stay on for the test to mean anything).
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
seen.axe = {};
const audit = async (name) => {
  await page.evaluate(axeSource);
  const r = await page.evaluate(async () => {
    const res = await window.axe.run(document, { resultTypes: ["violations"] });
    return res.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
  });
  seen.axe[name] = r;
};
// Every page at desktop and phone width: a screenshot of each, and whether a phone-wide
// window scrolls sideways (tables may scroll inside their box, the page may not).
seen.phoneOverflow = {};
const shots = async (name) => {
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.screenshot({ path: join(env.ARTIFACTS, `desktop-${name}.png`), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  seen.phoneOverflow[name] = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: join(env.ARTIFACTS, `phone-${name}.png`), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });
};
const style = (selector, prop) =>
  page.$eval(selector, (el, p) => getComputedStyle(el).getPropertyValue(p), prop);

try {
  // Unauthenticated: to the login form.
  await page.goto(base + "/extensions");
  seen.redirectedToLogin = new URL(page.url()).pathname === "/login";

  await audit("login");
  await shots("login");
  await page.fill('input[name="name"]', env.NAME);
  await page.fill('input[name="password"]', env.PASSWORD);
  await Promise.all([page.waitForURL(base + "/"), page.click('button[type="submit"]')]);
  seen.loggedIn = new URL(page.url()).pathname === "/";
  const cookie = (await context.cookies(base)).find((c) => c.name === "sipward_session");
  seen.cookie = cookie ? { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite } : null;
  seen.weakTotal = (await page.textContent("#weak-total span")).trim();
  seen.recentBans = await page.$$eval("#recent-bans tbody tr td:nth-child(2)", (tds) => tds.map((t) => t.textContent.trim()));
  // Times: ISO in the markup, "… ago" on screen, the exact local time on hover.
  seen.banTime = await page.$eval("#recent-bans time", (t) => ({ iso: t.getAttribute("datetime"), text: t.textContent.trim(), title: t.title }));
  // The pictures: server-drawn SVG bars, each with its time and value.
  const bars = (id) => page.$$eval(`#${id} rect.bar`, (rs) => rs.map((r) => [r.dataset.at, r.dataset.value]));
  // The server samples at start and every minute after: wait (with a deadline) for the
  // first sample rather than hoping it is there.
  for (const deadline = Date.now() + 15000; Date.now() < deadline; ) {
    const b = await bars("chart-strong");
    if (b.length && b[b.length - 1][1] !== "") break;
    await page.waitForTimeout(250);
    await page.reload();
  }
  seen.charts = {
    ids: await page.$$eval("#trends svg.chart", (s) => s.map((x) => x.id)),
    strong: await bars("chart-strong"),
    registrations: await bars("chart-registrations"),
    score: (await page.textContent(".cards .card:last-child span")).trim(),
  };
  await page.screenshot({ path: join(env.ARTIFACTS, "dashboard.png"), fullPage: true });
  await page.click("#range-30d");
  await page.waitForURL(/range=30d/);
  seen.charts.days = (await bars("chart-auth")).length;

  // The list: weak rows bold red, strong ones not; a hostile name is text.
  await page.goto(base + "/extensions");
  seen.weakRow = { color: await style(`#ext-${weakA} td.name`, "color"), weight: await style(`#ext-${weakA} td.name`, "font-weight") };
  seen.strongRow = { color: await style(`#ext-${env.STRONG} td.name`, "color"), weight: await style(`#ext-${env.STRONG} td.name`, "font-weight") };
  seen.weakTitle = await page.getAttribute(`#ext-${weakA}`, "title");
  seen.xssText = (await page.textContent(`#ext-${env.XSS} td.name`)).trim();
  // Findings in words, the rule id in the tooltip.
  seen.weakCell = (await page.textContent(`#ext-${weakA} td:last-child`)).replace(/\s+/g, " ").trim();
  seen.weakRuleTips = await page.$$eval(`#ext-${weakA} .finding`, (s) => s.map((x) => x.title));
  seen.strongCell = (await page.textContent(`#ext-${env.STRONG} td:last-child`)).trim();
  await page.screenshot({ path: join(env.ARTIFACTS, "extensions.png"), fullPage: true });

  // Weak only.
  await page.click("#weak-only");
  seen.weakOnlyRows = await page.$$eval("#extensions tbody tr", (rows) => rows.map((r) => r.id));

  // Search on the server: by name, by email, and nothing.
  await page.goto(base + "/extensions");
  await page.fill("#q", "reception");
  await Promise.all([page.waitForURL(/q=reception/), page.click('#search button[type="submit"]')]);
  seen.searchByName = await page.$$eval("#extensions tbody tr", (rows) => rows.map((r) => r.id));
  seen.searchUrl = page.url();
  seen.searchSummary = (await page.textContent("#summary")).replace(/\s+/g, " ").trim();
  await page.goto(base + `/extensions?q=u${weakB}%40example`);
  seen.searchByEmail = await page.$$eval("#extensions tbody tr", (rows) => rows.map((r) => r.id));
  await page.goto(base + "/extensions?q=nobody-here");
  seen.searchEmpty = (await page.textContent("#empty")).trim();

  // Select two weak extensions, Re-Generate, confirm.
  await page.goto(base + "/extensions");
  await page.check(`input[name="number"][value="${weakA}"]`);
  await page.check(`input[name="number"][value="${weakB}"]`);
  await page.click("#regenerate");
  await page.waitForSelector("#confirm");
  seen.confirmList = await page.$$eval("main li", (li) => li.map((l) => l.textContent.trim()));
  await page.click("#confirm");
  await page.waitForSelector("#results");
  seen.results = await page.$$eval("#results tbody tr", (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent.trim())));
  await page.goto(base + "/extensions");
  seen.afterRegenerate = {
    a: await page.getAttribute(`#ext-${weakA}`, "class"),
    b: await page.getAttribute(`#ext-${weakB}`, "class"),
    color: await style(`#ext-${weakA} td.name`, "color"),
  };

  // The edit form: a weak PIN turns its box red while typing, before saving.
  await page.goto(`${base}/extensions/${env.STRONG}`);
  seen.pinBefore = await style('input[name="pin"]', "border-top-color");
  await page.fill('input[name="pin"]', env.STRONG);
  await page.waitForSelector('input[name="pin"].weak', { timeout: 10000 });
  seen.pinAfter = await style('input[name="pin"]', "border-top-color");
  seen.pinWhy = (await page.textContent("#why-pin")).trim();
  seen.savedPin = null;
  await page.screenshot({ path: join(env.ARTIFACTS, "edit.png"), fullPage: true });

  // A form on another site posting to the console: refused.
  const hostile = `data:text/html,<form method="post" action="${base}/extensions/regenerate">` +
    `<input name="number" value="${env.STRONG}"><input name="confirm" value="yes"></form>`;
  await page.goto(hostile);
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(base + "/extensions/regenerate")),
    page.$eval("form", (f) => f.submit()),
  ]);
  seen.crossSiteStatus = answer.status();
  await page.waitForURL(base + "/extensions/regenerate");

  // Add an extension: its credentials are generated and shown once.
  await page.goto(base + "/extensions/new");
  await page.fill('#add input[name="number"]', env.NEW);
  await page.fill('#add input[name="name"]', "New desk");
  await Promise.all([page.waitForSelector("#added"), page.click('#add button[type="submit"]')]);
  seen.addedPassword = (await page.textContent("#password")).trim();

  // Gateways and providers: the weak gateway is red.
  await page.goto(base + "/trunks");
  seen.gatewayClass = await page.getAttribute("#gateway-gw1", "class");
  await page.screenshot({ path: join(env.ARTIFACTS, "trunks.png"), fullPage: true });

  // Every trunk setting round-trips through its forms: create, edit, delete.
  const submit = async (fields, expectUrl) => {
    for (const [k, v] of Object.entries(fields)) await page.fill(`#trunk-form [name="${k}"]`, v);
    await Promise.all([page.waitForURL(expectUrl), page.click("#save")]);
  };
  const cells = (sel) => page.$$eval(`${sel} td`, (tds) => tds.map((t) => t.textContent.trim()));
  const trips = {};
  await page.goto(base + "/trunks");
  await page.click("#add-gateway");
  await submit({ name: "gw9", vendor: "generic", number: "2960", auth_id: "gwx2960", password: "Gateway-Secret-Words-55", host: "127.0.0.11" }, /\/trunks(#.*)?$/);
  trips.gatewayAdded = await cells("#gateway-gw9");
  await page.goto(base + "/trunks/edit/gateway/gw9");
  await submit({ host: "bad host!" }, /\/trunks\/edit\/gateway\/gw9$/);
  trips.gatewayError = (await page.textContent("#form-error")).replace(/^⚠\s*/, "").trim();
  await page.screenshot({ path: join(env.ARTIFACTS, "trunk-form-error.png"), fullPage: true });
  await submit({ host: "127.0.0.12" }, /\/trunks(#.*)?$/);
  trips.gatewayEdited = await cells("#gateway-gw9");

  await page.click("#add-provider");
  await submit({ name: "carrier", registrar: "127.0.0.13", auth_id: "acct1", password: "Carrier-Secret-Words-61" }, /\/trunks(#.*)?$/);
  await page.goto(base + "/trunks/edit/provider/carrier");
  await submit({ auth_id: "acct2" }, /\/trunks(#.*)?$/);
  trips.providerEdited = await cells("#provider-carrier");

  await page.click("#add-route");
  await submit({ name: "national", pattern: "0ZX.", trunk: "gw9", strip: "1", prepend: "+49" }, /\/trunks(#.*)?$/);
  trips.routeAdded = await cells("#route-national");
  await page.goto(base + "/trunks/edit/route/national");
  await submit({ pattern: "0ZX.!" }, /\/trunks\/edit\/route\/national$/);
  trips.routeError = (await page.textContent("#form-error")).replace(/^⚠\s*/, "").trim();
  await submit({ pattern: "00X.", trunk: "provider:carrier", prepend: "" }, /\/trunks(#.*)?$/);
  trips.routeEdited = await cells("#route-national");

  await page.click("#add-did");
  await submit({ did: "+4930999", number: env.STRONG }, /\/trunks(#.*)?$/);
  trips.didAdded = await cells("#did-4930999");
  await page.goto(base + "/trunks/edit/did/4930999");
  await submit({ number: env.XSS }, /\/trunks(#.*)?$/);
  trips.didEdited = await cells("#did-4930999");
  await page.screenshot({ path: join(env.ARTIFACTS, "trunks-filled.png"), fullPage: true });

  // A gateway a route uses cannot go: the form says why.
  await page.goto(base + "/trunks/edit/provider/carrier");
  await Promise.all([page.waitForLoadState("load"), page.click("#remove")]);
  trips.removeRefused = (await page.textContent("#form-error")).trim();
  for (const path of ["route/national", "did/4930999", "gateway/gw9", "provider/carrier"]) {
    await page.goto(`${base}/trunks/edit/${path}`);
    await Promise.all([page.waitForURL(/\/trunks$/), page.click("#remove")]);
  }
  trips.emptyRoutes = (await page.textContent("#routes-empty")).trim();
  trips.emptyDids = (await page.textContent("#dids-empty")).trim();
  trips.leftRows = await page.$$eval("#section-gateway tbody tr, #section-provider tbody tr", (rows) => rows.map((r) => r.id));
  seen.trips = trips;

  // Security: the ban with its reason, then lifted.
  await page.goto(base + "/security");
  seen.bans = await page.$$eval("#bans tbody tr", (rows) => rows.map((r) => [...r.cells].slice(0, 2).map((c) => c.textContent.trim())));
  seen.topBanned = await page.$$eval("#top-banned tbody tr", (rows) => rows.map((r) => [...r.cells].slice(0, 2).map((c) => c.textContent.trim())));
  await page.screenshot({ path: join(env.ARTIFACTS, "security.png"), fullPage: true });
  await Promise.all([page.waitForURL(base + "/security"), page.click("#bans button")]);
  seen.bansAfter = (await page.textContent("#bans tbody")).trim();
  // A ban by hand, for an hour.
  await page.fill("#ban-source", "198.51.100.20");
  await page.fill("#ban-reason", "seen scanning");
  await page.selectOption("#ban-for", "3600");
  await Promise.all([page.waitForURL(base + "/security"), page.click("#ban")]);
  seen.bannedByHand = await page.$$eval("#bans tbody tr", (rows) => rows.map((r) => [...r.cells].slice(0, 3).map((c) => c.textContent.trim())));
  await page.click("#bans button");
  await page.waitForURL(base + "/security");

  // The advisor and the audit log.
  await page.goto(base + "/advisor");
  seen.nftables = await page.textContent("#nftables");
  await page.screenshot({ path: join(env.ARTIFACTS, "advisor.png"), fullPage: true });
  await page.goto(base + "/calls");
  seen.calls = (await page.textContent("#calls tbody")).trim();
  await page.goto(base + "/backups");
  seen.backups = await page.$$eval("#backups tbody tr td:first-child", (tds) => tds.map((t) => t.textContent.trim()));
  await page.goto(base + "/security");
  seen.thresholds = (await page.textContent("#thresholds")).replace(/\s+/g, " ").trim();
  await page.goto(base + "/log");
  seen.logActions = await page.$$eval("#log tbody tr", (rows) => rows.map((r) => r.cells[2].textContent.trim()));

  // Every page: axe-core, a desktop and a phone screenshot.
  const pages = {
    dashboard: "/", "dashboard-30d": "/?range=30d", extensions: "/extensions",
    "extensions-empty": "/extensions?q=nobody-here", edit: `/extensions/${env.STRONG}`,
    new: "/extensions/new", trunks: "/trunks", "trunk-new": "/trunks/new/route",
    "trunk-edit": "/trunks/edit/gateway/gw1", calls: "/calls", security: "/security",
    backups: "/backups", advisor: "/advisor", log: "/log",
    voicemail: "/voicemail", "voicemail-box": `/voicemail/${env.STRONG}`,
  };
  for (const [name, path] of Object.entries(pages)) {
    await page.goto(base + path);
    await audit(name);
    await shots(name);
  }
  // The Re-Generate confirmation and results (reached by a form, not a link).
  await page.goto(base + "/extensions");
  await page.check(`input[name="number"][value="${env.STRONG}"]`);
  await page.click("#regenerate");
  await page.waitForSelector("#confirm");
  await audit("confirm");
  await shots("confirm");

  // Keyboard only: Tab reaches the skip link first, then the navigation, and focus is
  // visible (an outline is drawn).
  await page.goto(base + "/extensions");
  await page.keyboard.press("Tab");
  seen.firstTab = await page.evaluate(() => document.activeElement.textContent.trim());
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  seen.focusOutline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  seen.focusedText = await page.evaluate(() => document.activeElement.textContent.trim());
} catch (e) {
  seen.error = String(e && e.stack || e);
} finally {
  await context.close();
}
console.log(JSON.stringify(seen));
