// Interop: the npm `ws` package (a client nobody here wrote) against wsgate's echo app.
//
//   node ws_client.mjs URL [--no-deflate] [--ca CERT_PEM]
//
// Checks: permessage-deflate negotiated exactly when offered; text and binary of several sizes
// echoed with their type; a fragmented message reassembled; ping answered with its payload;
// the close handshake echoing 1000. Prints `N passed, M failed`; exit 1 on any failure.
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';

const args = process.argv.slice(2);
const url = args[0];
const deflate = !args.includes('--no-deflate');
const caIdx = args.indexOf('--ca');
const ca = caIdx >= 0 ? readFileSync(args[caIdx + 1]) : undefined;
let passed = 0, failed = 0;
const label = deflate ? '[ws, deflate]' : '[ws, no deflate]';
function check(name, ok, detail = '') {
  if (ok) { passed++; console.log(`  ok   ${label} ${name}`); } else { failed++; console.log(`  FAIL ${label} ${name} ${detail}`); }
}

const ws = new WebSocket(url, {
  perMessageDeflate: deflate ? { threshold: 0 } : false,
  ca,
  handshakeTimeout: 5000,
  maxPayload: 4 << 20,
});
const queue = [];
let waiter = null;
ws.on('message', (data, isBinary) => {
  const item = { data, isBinary };
  if (waiter) { const w = waiter; waiter = null; w(item); } else queue.push(item);
});
function next(ms = 10000) {
  if (queue.length) return Promise.resolve(queue.shift());
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { waiter = null; reject(new Error('timeout')); }, ms);
    waiter = (item) => { clearTimeout(t); resolve(item); };
  });
}

const timer = setTimeout(() => { console.log('ws_client: overall timeout'); process.exit(1); }, 60000);
try {
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  check('permessage-deflate negotiated only when offered', deflate ? ws.extensions.includes('permessage-deflate') : ws.extensions === '',
    `(extensions=${JSON.stringify(ws.extensions)})`);
  for (const n of [0, 5, 125, 126, 65535, 65536, 1 << 20]) {
    const text = 'ü✓x'.repeat(Math.ceil(n / 3)).slice(0, n);
    ws.send(text);
    const m = await next();
    check(`text ${n} chars echoed`, !m.isBinary && m.data.toString('utf8') === text);
  }
  for (const n of [0, 1, 126, 65536, 300000]) {
    const data = randomBytes(n);
    ws.send(data);
    const m = await next();
    check(`binary ${n} B echoed`, m.isBinary && Buffer.compare(m.data, data) === 0);
  }
  ws.send('frag-', { fin: false });
  ws.send('ment', { fin: false });
  ws.send('ed ✓', { fin: true });
  const f = await next();
  check('fragmented text reassembled', f.data.toString() === 'frag-mented ✓', JSON.stringify(f.data.toString()));
  const pong = new Promise((resolve) => ws.once('pong', resolve));
  ws.ping(Buffer.from('are-you-there'));
  const payload = await Promise.race([pong, new Promise((r) => setTimeout(() => r(null), 5000))]);
  check('ping answered with its payload', payload && payload.toString() === 'are-you-there');
  const closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
  ws.close(1000, 'bye');
  const code = await closed;
  check('close handshake: server echoed 1000', code === 1000, `(code=${code})`);
} catch (e) {
  check('no error', false, String(e));
}
clearTimeout(timer);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
