// A tiny authoritative DNS server for the DNS phase, in its own process (the
// .mjs twin of test/fixtures/dns-server.ts). Every name under the zone
// (default "dns.bench") has A 127.0.0.1 and no AAAA (NOERROR, empty);
// anything else is NXDOMAIN. It binds 127.0.0.1:53 when it can (squid's
// dns_nameservers takes no port), else a free port.
// argv: [zone] [ttlSeconds] [port]

import dgram from 'node:dgram';
import dnsPacket from 'dns-packet';
import { serveIpc } from './lib.mjs';

const zone = (process.argv[2] ?? 'dns.bench').toLowerCase();
const ttl = Number(process.argv[3] ?? 300);
const wanted = process.argv[4] !== undefined ? Number(process.argv[4]) : 53;
let queries = 0;

function onMessage(socket, msg, rinfo) {
  let q;
  try {
    q = dnsPacket.decode(msg);
  } catch {
    return;
  }
  const question = q.questions?.[0];
  if (!question) return;
  queries++;
  const name = question.name.toLowerCase();
  const inZone = name === zone || name.endsWith(`.${zone}`);
  const answers = inZone && question.type === 'A' ? [{ name: question.name, type: 'A', class: 'IN', ttl, data: '127.0.0.1' }] : [];
  const reply = dnsPacket.encode({
    id: q.id,
    type: 'response',
    flags: dnsPacket.AUTHORITATIVE_ANSWER | (q.flags & dnsPacket.RECURSION_DESIRED) | (inZone ? 0 : 3),
    questions: q.questions,
    answers,
  });
  socket.send(reply, rinfo.port, rinfo.address);
}

function bind(port) {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.on('message', (msg, rinfo) => onMessage(socket, msg, rinfo));
    socket.once('error', reject);
    socket.bind(port, '127.0.0.1', () => {
      socket.removeListener('error', reject);
      resolve(socket.address().port);
    });
  });
}

let port;
try {
  port = await bind(wanted);
} catch {
  port = await bind(0);
}

serveIpc(
  {
    queries: () => ({ queries }),
  },
  { port, server: `127.0.0.1:${port}` },
);
