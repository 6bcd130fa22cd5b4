// The container image's /etc/wa-egress/config.yaml: the bundled policy
// (config/default.yaml, comments kept) with the admin listener on loopback,
// which the image's HEALTHCHECK (`wa-egress health`) asks for /healthz.
// Usage: node deploy/container/image-config.mjs [ADMIN_ADDRESS] > config.yaml
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';

const admin = process.argv[2] ?? '127.0.0.1:9090';
const doc = parseDocument(readFileSync(new URL('../../config/default.yaml', import.meta.url), 'utf8'));
doc.setIn(['listen', 'admin'], admin);
process.stdout.write(String(doc));
