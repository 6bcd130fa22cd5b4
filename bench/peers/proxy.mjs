// TooTallNate's `proxy` on a plain http.Server. argv: port. Runs until killed.
import http from 'node:http';
import { createProxy } from 'proxy';

const server = createProxy(http.createServer());
server.timeout = 0;
server.requestTimeout = 0;
server.keepAliveTimeout = 0;
server.listen(Number(process.argv[2]), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
