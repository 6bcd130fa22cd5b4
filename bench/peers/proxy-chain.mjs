// proxy-chain (Apify) as a plain forward proxy: no upstream, no auth, no
// logging. argv: port. Runs until killed.
import { Server } from 'proxy-chain';

const server = new Server({ port: Number(process.argv[2]), host: '127.0.0.1', verbose: false });
// Node's defaults already leave an established tunnel alone; make it explicit.
server.server.timeout = 0;
server.server.requestTimeout = 0;
server.server.keepAliveTimeout = 0;
await server.listen();
process.on('SIGTERM', () => process.exit(0));
