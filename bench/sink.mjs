// The far end of every tunnel, one child process (the bench starts several).
// Three listeners on 127.0.0.1:
//   echo    echoes and stays open (idle tunnels);
//   close   echoes what it gets, then ends the connection: the server closes
//           first, so the short connections of the handshake phases leave no
//           TIME_WAIT on anyone's ephemeral ports;
//   source  streams bytes as fast as the reader takes them (throughput).
// IPC: closeEcho ends every echo connection (again server-side first);
// count reports open connections.

import net from 'node:net';
import { serveIpc } from './lib.mjs';

const CHUNK = Buffer.alloc(256 * 1024);
for (let i = 0; i < CHUNK.length; i++) CHUNK[i] = (i * 7 + 13) & 0xff;

const echoSockets = new Set();
let open = 0;

function track(s) {
  open++;
  s.once('close', () => open--);
  s.on('error', () => s.destroy());
  s.setNoDelay(true);
}

const echo = net.createServer((s) => {
  track(s);
  echoSockets.add(s);
  s.once('close', () => echoSockets.delete(s));
  s.on('data', (d) => s.write(d));
});

const close = net.createServer((s) => {
  track(s);
  s.once('data', (d) => s.end(d));
});

const source = net.createServer((s) => {
  track(s);
  const pump = () => {
    while (!s.destroyed && s.write(CHUNK));
  };
  s.on('drain', pump);
  s.on('data', () => {}); // anything sent up is discarded
  pump();
});

const listen = (server) =>
  new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => resolve(server.address().port));
  });

const ports = { echo: await listen(echo), close: await listen(close), source: await listen(source) };

serveIpc(
  {
    closeEcho: async () => {
      const n = echoSockets.size;
      for (const s of echoSockets) s.end();
      const deadline = Date.now() + 10_000;
      while (echoSockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      for (const s of echoSockets) s.destroy();
      return { closed: n };
    },
    count: () => ({ open, echo: echoSockets.size }),
  },
  { ports },
);
