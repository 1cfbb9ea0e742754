// An echo server on the npm `ws` package (a server nobody here wrote), for `wsgate client`.
//
//   node ws_server.mjs PORT
//
// Every message is echoed with its type. permessage-deflate is enabled (threshold 0, so even
// short messages are compressed); the path /info answers with one JSON text message telling
// what was negotiated: {"extensions": "...", "protocol": "..."}. Subprotocol: the first offered.
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2]);
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: { threshold: 0 },
  handleProtocols: (protocols) => (protocols.size ? [...protocols][0] : false),
});
wss.on('connection', (ws, req) => {
  if (req.url.startsWith('/info')) {
    ws.send(JSON.stringify({ extensions: Object.keys(ws._extensions || {}).join(','), protocol: ws.protocol }));
  }
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
wss.on('listening', () => console.log(`ws_server listening on ${port}`));
