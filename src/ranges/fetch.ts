import https from 'node:https';
import { rootCertificates } from 'node:tls';
import { createGunzip } from 'node:zlib';

/**
 * One conditional HTTPS GET of a range list: `If-None-Match` /
 * `If-Modified-Since` from the last good copy, a deadline for the whole
 * exchange, a size cap, gzip accepted. Redirects are not followed (the
 * configured URL is the one audited); they fail with the new location named.
 */

export const MAX_LIST_BYTES = 32 * 1024 * 1024;

export interface Validators {
  etag?: string;
  lastModified?: string;
}

export type FetchResult = { status: 'ok'; body: Buffer; validators: Validators } | { status: 'not_modified' };

export interface FetchOptions {
  validators?: Validators;
  /** Extra trusted CA (PEM), added to Node's roots. */
  ca?: string;
  timeoutMs: number;
  signal?: AbortSignal;
}

export function fetchList(url: string, opts: FetchOptions): Promise<FetchResult> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'accept-encoding': 'gzip', 'user-agent': 'wa-egress range feed' };
    if (opts.validators?.etag) headers['if-none-match'] = opts.validators.etag;
    if (opts.validators?.lastModified) headers['if-modified-since'] = opts.validators.lastModified;
    const req = https.get(url, { headers, ca: opts.ca ? [...rootCertificates, opts.ca] : undefined, signal: opts.signal }, (res) => {
      res.on('error', fail);
      const status = res.statusCode ?? 0;
      if (status === 304) {
        res.resume();
        return resolve({ status: 'not_modified' });
      }
      if (status !== 200) {
        res.resume();
        const where = res.headers.location ? ` (redirect to ${res.headers.location}: configure that URL)` : '';
        return fail(new Error(`HTTP ${status}${where}`));
      }
      const body = res.headers['content-encoding'] === 'gzip' ? res.pipe(createGunzip()) : res;
      const chunks: Buffer[] = [];
      let size = 0;
      body.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_LIST_BYTES) fail(new Error(`larger than ${MAX_LIST_BYTES} bytes`));
        else chunks.push(c);
      });
      body.on('error', fail);
      body.on('end', () => {
        clearTimeout(timer);
        const etag = res.headers.etag;
        const lastModified = res.headers['last-modified'];
        resolve({ status: 'ok', body: Buffer.concat(chunks), validators: { ...(etag && { etag }), ...(lastModified && { lastModified }) } });
      });
    });
    const timer = setTimeout(() => fail(new Error(`no complete answer within ${opts.timeoutMs} ms`)), opts.timeoutMs);
    function fail(err: Error) {
      clearTimeout(timer);
      req.destroy();
      reject(err);
    }
    req.on('error', fail);
  });
}
