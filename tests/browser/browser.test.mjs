// The chat and log-view pages in headless Chromium. Run through run.sh, which starts wsgate
// and sets WSGATE_URL, LOG_DIR and ARTIFACTS.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.WSGATE_URL;
const ADMIN = process.env.ADMIN_URL;
const LOG_DIR = process.env.LOG_DIR;
const ARTIFACTS = process.env.ARTIFACTS || "test-artifacts/browser";
const TIMEOUT = 10000;

let browser;

before(async () => {
  assert.ok(BASE && LOG_DIR, "run through tests/browser/run.sh");
  // playwright-core gives every launch a fresh temporary --user-data-dir of its own (and
  // refuses the flag in `args`), removed again on close.
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    timeout: 30000,
  });
});

after(async () => {
  if (browser) await browser.close();
});

async function openPage(urlPath, width = 390) {
  // A phone-width viewport: the pages must work there.
  const context = await browser.newContext({ viewport: { width, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(BASE + urlPath);
  await page.waitForSelector('#status[data-state="open"]');
  page.errors = errors;
  return page;
}

async function say(page, user, text) {
  await page.fill("#user", user);
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const messageTexts = (page) => page.$$eval("#messages li.message .text", (els) => els.map((e) => e.textContent));

test("two pages in one chat room exchange messages; another room sees none", async () => {
  const a = await openPage("/websocket/chat");
  const b = await openPage("/websocket/chat");
  const ops = await openPage("/websocket/chat/ops");
  await say(a, "alice", "hello from A");
  await b.waitForFunction(() => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === "hello from A"));
  await say(b, "bob", "hi A, B here");
  await a.waitForFunction(() => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === "hi A, B here"));
  // join notices and timestamps are shown
  const notices = await a.$$eval("#messages li.notice", (els) => els.map((e) => e.textContent));
  assert.ok(notices.some((n) => n.includes("bob joined")), JSON.stringify(notices));
  assert.ok(await a.$("#messages li.message time[datetime]"));
  // the other room got nothing
  await ops.waitForTimeout(500);
  assert.deepEqual(await messageTexts(ops), []);
  await say(ops, "carol", "ops only");
  await ops.waitForFunction(() => document.querySelectorAll("#messages li.message").length === 1);
  await a.waitForTimeout(300);
  assert.ok(!(await messageTexts(a)).includes("ops only"));
  // a newcomer gets the history
  const late = await openPage("/websocket/chat");
  await late.waitForFunction(() => document.querySelectorAll("#messages li.message").length >= 2);
  assert.deepEqual((await messageTexts(late)).slice(-2), ["hello from A", "hi A, B here"]);
  await a.screenshot({ path: path.join(ARTIFACTS, "chat-room-phone.png") });
  await ops.screenshot({ path: path.join(ARTIFACTS, "chat-other-room.png") });
  for (const p of [a, b, ops, late]) {
    assert.deepEqual(p.errors, []);
    await p.context().close();
  }
});

test("markup in chat messages is shown as text", async () => {
  const a = await openPage("/websocket/chat/ops");
  const b = await openPage("/websocket/chat/ops");
  const evil = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"><b>bold?</b>';
  await say(a, "<i>mallory</i>", evil);
  await b.waitForFunction((t) => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === t), evil);
  assert.equal(await b.evaluate(() => window.__pwned), undefined);
  assert.equal(await b.$$eval("#messages img, #messages script, #messages b, #messages i", (els) => els.length), 0);
  const users = await b.$$eval("#messages .user", (els) => els.map((e) => e.textContent));
  assert.ok(users.includes("<i>mallory</i>"));
  await b.screenshot({ path: path.join(ARTIFACTS, "chat-markup-as-text.png") });
  await a.context().close();
  await b.context().close();
});

test("chat page reconnects with backoff after the socket drops", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 720 } });
  // Keep a reference to every socket the page opens, so the test can drop one.
  await context.addInitScript(() => {
    const Native = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = function (...args) { const s = new Native(...args); window.__sockets.push(s); return s; };
    Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  });
  const a = await context.newPage();
  a.setDefaultTimeout(TIMEOUT);
  await a.goto(BASE + "/websocket/chat");
  await a.waitForSelector('#status[data-state="open"]');
  await a.evaluate(() => window.__sockets[0].close());
  await a.waitForSelector('#status[data-state="closed"]');
  await a.waitForSelector('#status[data-state="open"]');
  assert.equal(await a.evaluate(() => window.__sockets.length), 2);
  await say(a, "dora", "back again");
  await a.waitForFunction(() => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === "back again"));
  await context.close();
});

test("log-view shows appended lines across a rotation and a truncation, with filter and pause", async () => {
  const log = path.join(LOG_DIR, "app.log");
  fs.appendFileSync(log, "before 1\nbefore 2\n");
  const page = await openPage("/admin/log-view", 800);
  const lines = () => page.$$eval('#log li[data-kind="line"]', (els) => els.map((e) => e.textContent));
  const waitLine = (t) => page.waitForFunction((t) => [...document.querySelectorAll("#log li")].some((e) => e.textContent === t), t);
  await waitLine("before 2"); // the backlog
  const options = await page.$$eval("#file option", (els) => els.map((e) => e.textContent));
  assert.deepEqual(options, ["app.log", "other.log"]);

  fs.appendFileSync(log, 'live 1 <img src=x onerror="window.__pwned=1">\nlive 2\n');
  await waitLine("live 2");
  assert.ok((await lines()).includes('live 1 <img src=x onerror="window.__pwned=1">'));
  assert.equal(await page.evaluate(() => window.__pwned), undefined);

  // rotation: rename, then a new file
  fs.renameSync(log, log + ".1");
  fs.appendFileSync(log, "after rotation\n");
  await waitLine("after rotation");
  // truncation
  fs.truncateSync(log, 0);
  await page.waitForFunction(() => [...document.querySelectorAll("#log li.notice")].some((e) => e.textContent.includes("truncated")));
  fs.appendFileSync(log, "after truncation\n");
  await waitLine("after truncation");

  // the filter hides non-matching lines
  await page.fill("#filter", "after");
  const visible = await page.$$eval('#log li[data-kind="line"]:not(.hidden)', (els) => els.map((e) => e.textContent));
  assert.deepEqual(visible, ["after rotation", "after truncation"]);
  await page.fill("#filter", "");

  // pause holds lines back; resume shows them
  await page.click("#pause");
  fs.appendFileSync(log, "while paused\n");
  await page.waitForFunction(() => document.getElementById("paused").textContent.includes("held"));
  assert.ok(!(await lines()).includes("while paused"));
  await page.click("#pause");
  await waitLine("while paused");

  await page.screenshot({ path: path.join(ARTIFACTS, "log-view.png") });
  // the other file does not exist yet: a notice, then its lines once it does
  await page.selectOption("#file", "other.log");
  await page.waitForFunction(() => [...document.querySelectorAll("#log li.notice")].some((e) => e.textContent.includes("does not exist")));
  fs.appendFileSync(path.join(LOG_DIR, "other.log"), "other born\n");
  await waitLine("other born");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("admin dashboard: live counts follow clients, a publish from it reaches a chat page, 1280 and 360 px", async () => {
  assert.ok(ADMIN, "run through tests/browser/run.sh (ADMIN_URL)");
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const dash = await context.newPage();
  dash.setDefaultTimeout(TIMEOUT);
  const errors = [];
  dash.on("pageerror", (e) => errors.push(e));
  await dash.goto(ADMIN + "/");
  await dash.waitForSelector('#live.ok');
  await dash.waitForFunction(() => document.querySelector("#c-open").textContent !== "–");
  const before = Number(await dash.textContent("#c-open"));

  // A chat client connects: the dashboard's count goes up by itself (the event stream).
  const chat = await openPage("/websocket/chat", 1280);
  await say(chat, "carol", "hi from carol");
  await dash.waitForFunction((n) => Number(document.querySelector("#c-open").textContent) === n + 1, before);
  await dash.waitForFunction(() => [...document.querySelectorAll("#apps td")].some((td) => td.textContent === "chat"));
  // The room's subscription is listed and searchable.
  await dash.fill("#subs-filter", "chat:chat:/websocket/chat");
  await dash.waitForFunction(() => [...document.querySelectorAll("#subs td")].some((td) => td.textContent === "chat:chat:/websocket/chat"));

  // Publish from the dashboard, in the chat's message format: the chat page shows it.
  await dash.click('#subs button[aria-label="Publish to chat:chat:/websocket/chat"]');
  await dash.fill("#pub-text", JSON.stringify({ type: "message", user: "ops", text: "from the dashboard", ts: new Date().toISOString() }));
  await dash.click('#publish button[type="submit"]');
  await dash.waitForFunction(() => /Delivered to [1-9]/.test(document.querySelector("#pub-result").textContent));
  await chat.waitForFunction(() => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === "from the dashboard"));
  await dash.screenshot({ path: path.join(ARTIFACTS, "dashboard-1280.png"), fullPage: true });

  // Close the chat's connection from the dashboard: the count goes back down.
  // The chat page reconnects by itself (with backoff), so the proof is that this connection's
  // row goes away, the page sees the close, and a new connection takes its place.
  await dash.fill("#chan-filter", "/websocket/chat");
  await dash.waitForFunction(() => document.querySelectorAll("#chans tr").length === 1);
  const closedId = await dash.textContent("#chans tr td");
  await chat.evaluate(() => {
    const status = document.querySelector("#status");
    new MutationObserver(() => { if (status.dataset.state === "closed") window.sawClose = true; })
      .observe(status, { attributes: true });
  });
  await dash.click('#chans button.danger');
  await chat.waitForFunction(() => window.sawClose === true);
  await dash.waitForFunction((id) => ![...document.querySelectorAll("#chans tr td:first-child")].some((td) => td.textContent === id), closedId);
  await chat.waitForFunction(() => document.querySelector("#status").dataset.state === "open");
  await dash.waitForFunction((n) => Number(document.querySelector("#c-open").textContent) === n + 1, before);

  // Phone width: nothing wider than the screen but the scrollable tables.
  await dash.setViewportSize({ width: 360, height: 740 });
  const overflow = await dash.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at 360 px`);
  await dash.screenshot({ path: path.join(ARTIFACTS, "dashboard-360.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
  await chat.context().close();
});

test("EventSource on a pubsub URL recovers what was published while its stream was down", async () => {
  const page = await openPage("/websocket/chat", 1280);
  const publish = async (data) => {
    const r = await fetch(ADMIN + "/v1/publish", { method: "POST", body: JSON.stringify({ channel: "news:sse", data }) });
    assert.equal(r.status, 200, await r.text());
  };
  await page.evaluate(() => {
    window.sse = { pubs: [], subscribes: [], opens: 0 };
    const source = new EventSource("/live?channel=news:sse");
    source.onopen = () => { window.sse.opens++; };
    source.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.subscribe) window.sse.subscribes.push(m.subscribe);
      if (m.push && m.push.pub) window.sse.pubs.push(m.push.pub.offset);
    };
  });
  await page.waitForFunction(() => window.sse.subscribes.length === 1);
  for (const i of [1, 2, 3]) await publish({ i });
  await page.waitForFunction(() => window.sse.pubs.length === 3);

  // Drop the stream from the server side (the control API closes the channel), and publish
  // while the browser waits to reconnect (the stream asked for `retry: 1000`).
  const listed = await (await fetch(ADMIN + "/v1/channels")).json();
  const stream = listed.channels.find((c) => c.app === "live");
  assert.ok(stream, JSON.stringify(listed));
  const closed = await fetch(ADMIN + "/v1/channels/" + encodeURIComponent(stream.id), { method: "DELETE" });
  assert.equal(closed.status, 202);
  for (const i of [4, 5, 6]) await publish({ i });

  // The browser reconnects by itself with Last-Event-ID: 4, 5, 6 arrive once, in order.
  await page.waitForFunction(() => window.sse.pubs.length >= 6 && window.sse.subscribes.length === 2);
  const seen = await page.evaluate(() => window.sse);
  assert.deepEqual(seen.pubs, [1, 2, 3, 4, 5, 6]);
  assert.equal(seen.subscribes[1].recovered, true, JSON.stringify(seen.subscribes));
  assert.ok(seen.opens >= 2);
  await publish({ i: 7 });
  await page.waitForFunction(() => window.sse.pubs.length === 7);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("chat page: room name, who is here, own messages, history apart, at 360 and 1280 px", async () => {
  // A first visit: no stored name, so the page asks for one with the focus in the name field.
  const contextA = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const a = await contextA.newPage();
  a.setDefaultTimeout(TIMEOUT);
  const errors = [];
  a.on("pageerror", (e) => errors.push(e));
  await a.goto(BASE + "/websocket/chat/ops");
  await a.waitForSelector('#status[data-state="open"]');
  await a.waitForFunction(() => document.title === "Operations · wsgate chat");
  assert.equal(await a.textContent("#room"), "Operations");
  assert.equal(await a.evaluate(() => document.activeElement.id), "user");
  assert.equal(await a.isVisible("#hint"), true);

  await say(a, "amira", "layout check from amira");
  await a.waitForFunction(() => [...document.querySelectorAll("#messages li.mine .text")].some((e) => e.textContent === "layout check from amira"));
  await a.waitForFunction(() => /amira/.test(document.querySelector("#members").textContent));
  assert.equal(await a.isVisible("#hint"), false);

  // A second person at desktop width: history is set apart, amira's message is not "mine".
  const b = await openPage("/websocket/chat/ops", 1280);
  await b.waitForSelector("#messages li.divider");
  const history = await b.$$eval("#messages li.history.message .text", (els) => els.map((e) => e.textContent));
  assert.ok(history.includes("layout check from amira"), JSON.stringify(history));
  assert.equal(await b.$$eval("#messages li.mine", (els) => els.length), 0);
  await say(b, "bruno", "hello amira");
  await a.waitForFunction(() => /2 here: .*amira.*bruno|2 here: .*bruno.*amira/.test(document.querySelector("#members").textContent));
  await b.waitForFunction(() => [...document.querySelectorAll("#messages li.mine .text")].some((e) => e.textContent === "hello amira"));

  // 360 px: nothing wider than the screen, Send on the message's row, the header above the list.
  const layout = await a.evaluate(() => {
    const box = (id) => document.getElementById(id).getBoundingClientRect();
    return {
      overflow: document.documentElement.scrollWidth - window.innerWidth,
      textTop: box("text").top, sendTop: box("send").top,
      headerBottom: document.querySelector("header").getBoundingClientRect().bottom, listTop: box("scroller").top,
      formTop: document.getElementById("form").getBoundingClientRect().top, innerHeight: window.innerHeight,
    };
  });
  assert.ok(layout.overflow <= 0, JSON.stringify(layout));
  assert.ok(Math.abs(layout.textTop - layout.sendTop) < 2, "Send wraps at 360 px: " + JSON.stringify(layout));
  assert.ok(layout.headerBottom <= layout.listTop + 0.5, JSON.stringify(layout));
  assert.ok(layout.formTop < layout.innerHeight, JSON.stringify(layout));
  await a.screenshot({ path: path.join(ARTIFACTS, "chat-360.png") });
  await b.screenshot({ path: path.join(ARTIFACTS, "chat-1280.png") });

  // log-view at phone width too.
  const logs = await contextA.newPage();
  await logs.goto(BASE + "/admin/log-view");
  await logs.waitForSelector('#status[data-state="open"]');
  const logOverflow = await logs.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(logOverflow <= 0, `log-view scrolls sideways by ${logOverflow}px at 360 px`);
  await logs.screenshot({ path: path.join(ARTIFACTS, "log-view-360.png") });
  assert.deepEqual(errors, []);
  await contextA.close();
  await b.context().close();
});
