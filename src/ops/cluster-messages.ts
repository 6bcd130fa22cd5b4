import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { FileSnapshot } from '../config/read.js';

/**
 * What a cluster's primary and its workers say to each other over the IPC
 * channel (advanced serialization: Buffers and arrays travel as they are).
 * The primary validates every configuration and sends the bytes it read;
 * workers serve and send their audit lines back for the one writer.
 */

/** A configuration as the primary read it. */
export interface ConfigBytes {
  file: string;
  snapshot: FileSnapshot;
  hash: string;
}

export type ToWorker =
  | ({ t: 'start'; idPrefix: string; own: AddressInfo[]; writable: boolean; metrics: boolean } & ConfigBytes)
  | ({ t: 'apply'; seq: number } & ConfigBytes)
  /** Every worker applied the reload: `reload.recheck_tunnels` may judge open tunnels again. */
  | { t: 'recheck' }
  /** The primary's own sockets (the admin listener): a destination there is a loop. */
  | { t: 'own'; own: AddressInfo[] }
  /** The audit destination started or stopped failing (`audit.on_error` applies in the workers). */
  | { t: 'audit'; writable: boolean }
  /** A drain (the first), or its end (a second). */
  | { t: 'drain'; signal: string }
  | { t: 'metrics'; seq: number };

export type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

export type FromWorker =
  /** Listening for the primary's messages (one sent earlier would be lost): send the configuration. */
  | { t: 'hello' }
  | { t: 'ready' }
  /** The start failed: the error's fields serve's start reports (the listener, the address). */
  | { t: 'failed'; error: { message: string; code?: string; listener?: string; address?: string; port?: number } }
  | { t: 'lines'; lines: string[] }
  /** `failed`: this worker could not put it in force (a range list that does not load), and still runs the previous one. */
  | { t: 'applied'; seq: number; problems: string[]; failed?: string }
  | { t: 'metrics'; seq: number; metrics: MetricsJson }
  | { t: 'draining' }
  /** Its last audit lines were sent before this, its last metrics (when it counts) with it: the worker exits. */
  | { t: 'closed'; metrics?: MetricsJson };
