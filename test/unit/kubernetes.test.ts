import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments, parse } from 'yaml';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Service } from 'kubernetes-models/v1/Service';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { parseConfig } from '../../src/config/load.js';
import { CLI, cleanEnv } from '../helpers.js';

/** deploy/kubernetes: valid against the API schemas, and in step with the config its ConfigMap holds. */

const DIR = resolve(import.meta.dirname, '../../deploy/kubernetes');
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
};

type Obj = { apiVersion: string; kind: string; metadata: { name: string }; [k: string]: unknown };
const kustomization = parse(readFileSync(join(DIR, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
const objects: Obj[] = kustomization.resources.flatMap((f) =>
  parseAllDocuments(readFileSync(join(DIR, f), 'utf8')).map((d) => d.toJS() as Obj),
);
const one = <T>(kind: string) => objects.find((o) => o.kind === kind) as unknown as T;

/* eslint-disable @typescript-eslint/no-explicit-any */
const deployment = one<any>('Deployment');
const service = one<any>('Service');
const configMap = one<any>('ConfigMap');
const configText: string = configMap.data['config.yaml'];
const config = parseConfig(configText, '/etc/wa-egress/config.yaml');
const container = deployment.spec.template.spec.containers[0];
const containerPort = (name: string | number): number =>
  typeof name === 'number' ? name : container.ports.find((p: any) => p.name === name).containerPort;

describe('deploy/kubernetes manifests', () => {
  it('lists every manifest in kustomization.yaml, each file present', () => {
    for (const f of kustomization.resources) expect(existsSync(join(DIR, f)), f).toBe(true);
    expect(objects.map((o) => o.kind).sort()).toEqual(['ConfigMap', 'Deployment', 'NetworkPolicy', 'PodDisruptionBudget', 'Service']);
  });

  it.each(objects.map((o) => [`${o.kind} ${o.metadata.name}`, o] as const))('%s validates against the Kubernetes API schema', (_, o) => {
    const Model = MODELS[`${o.apiVersion}/${o.kind}`];
    expect(Model, `no schema for ${o.apiVersion} ${o.kind}`).toBeDefined();
    expect(() => new Model!(o as never).validate()).not.toThrow();
  });

  it('rejects a manifest with a wrong field type (the validation is real)', () => {
    const bad = structuredClone(deployment);
    bad.spec.replicas = 'two';
    expect(() => new Deployment(bad).validate()).toThrow();
  });

  it('mounts the ConfigMap at /etc/wa-egress, where the image reads config.yaml', () => {
    const volume = deployment.spec.template.spec.volumes.find((v: any) => v.configMap?.name === configMap.metadata.name);
    const mount = container.volumeMounts.find((m: any) => m.name === volume.name);
    expect(mount.mountPath).toBe('/etc/wa-egress');
    expect(readFileSync(resolve(DIR, '../../Dockerfile'), 'utf8')).toContain('/etc/wa-egress/config.yaml');
  });

  it('probes the admin listener the ConfigMap configures: readiness /readyz, liveness /healthz', () => {
    const admin = config.listen.admin!;
    expect(admin.host).toBe('0.0.0.0');
    expect(containerPort(container.readinessProbe.httpGet.port)).toBe(admin.port);
    expect(containerPort(container.livenessProbe.httpGet.port)).toBe(admin.port);
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    const annotations = deployment.spec.template.metadata.annotations;
    expect(Number(annotations['prometheus.io/port'])).toBe(admin.port);
    expect(annotations['prometheus.io/path']).toBe('/metrics');
  });

  it('keeps listeners open while endpoints update, and outlasts the drain before SIGKILL', () => {
    const { delay, drain_timeout } = config.shutdown;
    const probe = container.readinessProbe;
    // Readiness fails at the first probe after SIGTERM; the delay covers it with room to spare.
    expect(delay).toBeGreaterThan(probe.periodSeconds * probe.failureThreshold * 1000);
    expect(deployment.spec.template.spec.terminationGracePeriodSeconds * 1000).toBeGreaterThan(delay + drain_timeout);
  });

  it('watches the mounted config, so ConfigMap edits reach running pods', () => {
    expect(config.reload.watch).toBe(true);
    expect(config.audit.file).toBe('-');
  });

  it('serves on the Service ports what the config listens on', () => {
    const listening = [config.listen.proxy!.port, ...config.listen.forwards.map((f) => f.listen.port)].sort();
    expect(service.spec.ports.map((p: any) => p.port).sort()).toEqual(listening);
    for (const p of service.spec.ports) expect(containerPort(p.targetPort)).toBe(p.port);
    expect(config.listen.forwards.find((f) => f.listen.port === 5222)?.to).toMatchObject({ host: 'g.whatsapp.net', port: 5222 });
    expect(service.spec.selector).toEqual(deployment.spec.selector.matchLabels);
  });

  it('runs with least privilege and bounded resources', () => {
    const sc = container.securityContext;
    expect(sc).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, runAsNonRoot: true, capabilities: { drop: ['ALL'] } });
    expect(container.resources.requests).toBeDefined();
    expect(container.resources.limits.cpu).toBeDefined();
    expect(container.resources.limits.memory).toBeDefined();
    // workers: auto, bounded by the CPU limit: every core the pod is given serves.
    expect(config.workers).toBe('auto');
    const cpus = Math.ceil(Number(String(container.resources.limits.cpu).replace(/m$/, '')) / (String(container.resources.limits.cpu).endsWith('m') ? 1000 : 1));
    expect(cpus).toBeGreaterThanOrEqual(2);
    expect(deployment.spec.replicas).toBeGreaterThanOrEqual(2);
    const pdb = one<any>('PodDisruptionBudget');
    expect(pdb.spec.selector.matchLabels).toEqual(deployment.spec.selector.matchLabels);
  });

  it('lets clients in on the Service ports and out only to 443, 5222 and DNS', () => {
    const np = one<any>('NetworkPolicy');
    expect(np.spec.policyTypes.sort()).toEqual(['Egress', 'Ingress']);
    const inPorts = np.spec.ingress.flatMap((r: any) => r.ports.map((p: any) => p.port)).sort();
    expect(inPorts).toEqual([...service.spec.ports.map((p: any) => p.port), config.listen.admin!.port].sort());
    const out = np.spec.egress.flatMap((r: any) => r.ports.map((p: any) => `${p.port}/${p.protocol}`)).sort();
    expect(out).toEqual(['443/TCP', '5222/TCP', '53/TCP', '53/UDP']);
    for (const rule of config.policy.rules) for (const port of rule.ports) expect([443, 5222]).toContain(port);
  });

  it('passes `wa-egress config check`', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'wa-egress-k8s-')), 'config.yaml');
    writeFileSync(file, configText);
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'config', 'check', file], { env: cleanEnv() });
    expect(stdout).toContain('OK');
  });
});
