// The least a Node.js CONNECT proxy can do on http.Server: its 'connect'
// event, dial the IP literal, answer 200, pipe. No policy, no audit, no
// limits: a floor for what Node.js itself costs. argv: port.
import http from 'node:http';
import net from 'node:net';

const server = http.createServer({ noDelay: true });
server.on('connect', (req, c, head) => {
  c.on('error', () => c.destroy());
  const [host, port] = req.url.split(':');
  const u = net.connect({ host, port: Number(port), noDelay: true }, () => {
    c.write('HTTP/1.1 200 Connection established\r\n\r\n');
    if (head.length) u.write(head);
    c.pipe(u);
    u.pipe(c);
  });
  u.on('error', () => c.destroy());
  c.on('close', () => u.destroy());
  u.on('close', () => c.destroy());
});
server.timeout = 0;
server.listen(Number(process.argv[2]), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
