// Interop: headless Chromium (Debian's `chromium`, driven by playwright-core; no browser is
// ever downloaded) opens wsgate's echo app over wss:// with a self-signed certificate.
//
//   node browser_echo.mjs https://localhost:PORT/ /websocket/echo
//
// The page (any page of the origin; here the upstream's) is loaded over TLS, then the page's
// own WebSocket API talks to the echo app: text, binary and a 1 MiB message come back; the
// negotiated extensions (Chromium offers permessage-deflate) are reported; the page's
// navigation protocol (h2 expected: ALPN) is reported too. Whether the WebSocket itself ran
// over HTTP/2 (RFC 8441) is checked by the caller in wsgate's log.
// Prints `N passed, M failed`; exit 1 on any failure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [origin, wsPath] = process.argv.slice(2);
let passed = 0, failed = 0;
function check(name, ok, detail = '') {
  if (ok) { passed++; console.log(`  ok   [chromium] ${name}`); } else { failed++; console.log(`  FAIL [chromium] ${name} ${detail}`); }
}
const profile = mkdtempSync(join(tmpdir(), 'wsgate-chromium-'));
const timer = setTimeout(() => { console.log('browser_echo: overall timeout'); process.exit(1); }, 90000);
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    ignoreHTTPSErrors: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--ignore-certificate-errors'],
  });
  const page = context.pages()[0] || await context.newPage();
  await page.goto(origin, { waitUntil: 'load', timeout: 20000 });
  const nav = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol);
  check('page loaded over HTTP/2 (ALPN h2)', nav === 'h2', `(nextHopProtocol=${nav})`);
  const wsUrl = origin.replace(/^https:/, 'wss:').replace(/\/$/, '') + wsPath;
  const result = await page.evaluate(async (url) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const out = { events: [] };
    const messages = [];
    let waiting = null;
    ws.onmessage = (e) => { if (waiting) { const w = waiting; waiting = null; w(e.data); } else messages.push(e.data); };
    const next = () => messages.length ? Promise.resolve(messages.shift()) : new Promise((r) => { waiting = r; });
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('WebSocket error')); });
    out.extensions = ws.extensions;
    ws.send('hello from chromium ✓');
    out.text = await next();
    ws.send(new Uint8Array([0, 1, 2, 250, 255]).buffer);
    out.binary = Array.from(new Uint8Array(await next()));
    const big = 'abc✓'.repeat(262144);
    ws.send(big);
    out.bigOk = (await next()) === big;
    const closed = new Promise((r) => { ws.onclose = (e) => r({ code: e.code, clean: e.wasClean }); });
    ws.close(1000, 'bye');
    out.close = await closed;
    return out;
  }, wsUrl);
  check('text echoed', result.text === 'hello from chromium ✓', JSON.stringify(result.text));
  check('binary echoed', JSON.stringify(result.binary) === '[0,1,2,250,255]', JSON.stringify(result.binary));
  check('1 MiB text echoed', result.bigOk === true);
  check('permessage-deflate negotiated', (result.extensions || '').includes('permessage-deflate'), `(extensions=${result.extensions})`);
  check('clean close 1000', result.close.code === 1000 && result.close.clean, JSON.stringify(result.close));
} catch (e) {
  check('no error', false, String(e && e.stack || e));
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  clearTimeout(timer);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
