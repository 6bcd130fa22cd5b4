// The DNS server of the DNS phase, in its own process: the shared fixture
// (test/fixtures/dns-server.mjs) with one zone. Every name under the zone
// (default "dns.bench") has A 127.0.0.1 and no AAAA (NOERROR, empty);
// anything else is NXDOMAIN. It binds 127.0.0.1:53 when it can (squid's
// dns_nameservers takes no port), else a free port.
// argv: [zone] [ttlSeconds] [port]

import { startDns } from '../test/fixtures/dns-server.mjs';
import { serveIpc } from './lib.mjs';

const zone = (process.argv[2] ?? 'dns.bench').toLowerCase();
const ttl = Number(process.argv[3] ?? 300);
const wanted = process.argv[4] !== undefined ? Number(process.argv[4]) : 53;

const table = (name) => (name === zone || name.endsWith(`.${zone}`) ? { A: ['127.0.0.1'], ttl } : undefined);
const dns = await startDns(table, { port: wanted }).catch(() => startDns(table));

serveIpc({ queries: () => ({ queries: dns.total }) }, { port: dns.port, server: dns.server });
