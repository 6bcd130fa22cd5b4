// The least a Node.js CONNECT proxy can do, on net.Server: read the head,
// dial the IP literal, answer 200, pipe. No policy, no audit, no limits:
// a floor for what Node.js itself costs, not a proxy to deploy. argv: port.
import net from 'node:net';

net
  .createServer({ noDelay: true }, (c) => {
    c.on('error', () => c.destroy());
    let head = Buffer.alloc(0);
    const onData = (d) => {
      head = head.length ? Buffer.concat([head, d]) : d;
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      c.removeListener('data', onData);
      c.pause();
      const m = /^CONNECT ([^ :]+):(\d+) /.exec(head.toString('latin1', 0, end));
      if (!m) return void c.end('HTTP/1.1 400 Bad Request\r\n\r\n');
      const u = net.connect({ host: m[1], port: Number(m[2]), noDelay: true }, () => {
        c.write('HTTP/1.1 200 Connection established\r\n\r\n');
        if (end + 4 < head.length) u.write(head.subarray(end + 4));
        c.pipe(u);
        u.pipe(c);
      });
      u.on('error', () => c.destroy());
      c.on('close', () => u.destroy());
      u.on('close', () => c.destroy());
    };
    c.on('data', onData);
  })
  .listen(Number(process.argv[2]), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
