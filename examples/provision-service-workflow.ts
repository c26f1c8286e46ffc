/**
 * A realistic `provision_service` workflow: a database, a DNS record, a vendor
 * account confirmed by callback, and a certificate issued by polling, each
 * with a compensation. The "cloud" here is a small in-process simulation so
 * that the example runs anywhere; swap `FakeCloud` for your real clients.
 */
import { z } from 'zod';
import { defineWorkflow, NonRetryableError } from '../src/index.js';

/** What a provisioning request carries. `plan: "broken-dns"` makes DNS fail for good (to show halts and rollbacks). */
export const provisionInput = z.object({
  plan: z.enum(['starter', 'pro', 'enterprise', 'broken-dns']),
  region: z.string().min(2).max(32).default('eu-west-1'),
  serviceName: z.string().regex(/^[a-z][a-z0-9-]{1,40}$/, 'lowercase letters, digits and dashes'),
});

/** A tiny simulation of the providers a provisioning workflow talks to. */
export class FakeCloud {
  readonly databases = new Map<string, { region: string; plan: string }>();
  readonly dnsRecords = new Map<string, string>();
  readonly certificates = new Map<string, { hostname: string; readyAfterPolls: number; polls: number }>();
  readonly log: string[] = [];

  createDatabase(key: string, region: string, plan: string) {
    const databaseId = `db_${hash(key)}`;
    // Idempotent on the key: a retried attempt finds the database it already made.
    if (!this.databases.has(databaseId)) this.databases.set(databaseId, { region, plan });
    this.log.push(`create database ${databaseId}`);
    return { databaseId, host: `${databaseId}.${region}.db.example.net`, password: `pw-${hash(key + 'pw')}` };
  }

  dropDatabase(databaseId: string) {
    this.databases.delete(databaseId);
    this.log.push(`drop database ${databaseId}`);
  }

  upsertDns(hostname: string, target: string) {
    this.dnsRecords.set(hostname, target);
    this.log.push(`dns ${hostname} -> ${target}`);
    return { recordId: `rr_${hash(hostname)}`, hostname };
  }

  removeDns(hostname: string) {
    this.dnsRecords.delete(hostname);
    this.log.push(`dns remove ${hostname}`);
  }

  orderCertificate(hostname: string) {
    const orderId = `ord_${hash(hostname)}`;
    if (!this.certificates.has(orderId)) this.certificates.set(orderId, { hostname, readyAfterPolls: 1, polls: 0 });
    this.log.push(`order certificate ${orderId}`);
    return { orderId };
  }

  certificateStatus(orderId: string): { state: 'pending' } | { state: 'issued'; serial: string } {
    const order = this.certificates.get(orderId);
    if (!order) throw new NonRetryableError(`unknown certificate order ${orderId}`);
    order.polls++;
    return order.polls > order.readyAfterPolls ? { state: 'issued', serial: `serial-${hash(orderId)}` } : { state: 'pending' };
  }

  revokeCertificate(orderId: string) {
    this.certificates.delete(orderId);
    this.log.push(`revoke certificate ${orderId}`);
  }
}

function hash(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(36);
}

/**
 * Builds the workflow against a given cloud. `onVendorToken` is told each
 * vendor callback token (a real vendor would receive it in the API call);
 * DNS fails for good for service names in `lockedDns` (a zone locked by the registrar).
 */
export function provisionServiceWorkflow(
  cloud: FakeCloud,
  onVendorToken: (workflowId: string, token: string) => void = () => {},
  lockedDns: ReadonlySet<string> = new Set(),
) {
  return defineWorkflow({ name: 'provision_service', version: 1, input: provisionInput, onFailure: 'halt' })
    .step('create_database', {
      retry: { maximumAttempts: 4, initialIntervalMs: 1000 },
      run: (ctx) => cloud.createDatabase(ctx.idempotencyKey, ctx.input.region, ctx.input.plan),
      compensate: (ctx) => cloud.dropDatabase(ctx.output.databaseId),
    })
    .step('register_dns', {
      dependsOn: ['create_database'],
      retry: { maximumAttempts: 3, initialIntervalMs: 500 },
      run: (ctx) => {
        if (ctx.input.plan === 'broken-dns' || lockedDns.has(ctx.input.serviceName)) throw new NonRetryableError('DNS zone is locked for this account', { code: 'dns_zone_locked' });
        return cloud.upsertDns(`${ctx.input.serviceName}.apps.example.com`, ctx.deps.create_database.host);
      },
      compensate: (ctx) => cloud.removeDns(ctx.output.hostname),
    })
    .step('vendor_account', {
      dependsOn: ['create_database'],
      run: (ctx) => {
        onVendorToken(ctx.workflowId, ctx.callbackToken);
        return ctx.waitForCallback<{ endpoint?: string; credentials?: unknown; metadata?: unknown }>({ timeoutMs: 24 * 3_600_000 });
      },
      compensate: (ctx) => void cloud.log.push(`close vendor account for ${ctx.workflowId}`),
    })
    .step('issue_cert', {
      dependsOn: ['register_dns'],
      pollIntervalMs: 1000,
      pollTimeoutMs: 10 * 60_000,
      run: (ctx) => cloud.orderCertificate(ctx.deps.register_dns.hostname),
      poll: (ctx) => {
        const status = cloud.certificateStatus(ctx.runOutput.orderId);
        return status.state === 'issued' ? { done: true, output: { orderId: ctx.runOutput.orderId, serial: status.serial } } : { done: false };
      },
      compensate: (ctx) => cloud.revokeCertificate(ctx.output.orderId),
    })
    .step('announce', {
      dependsOn: ['vendor_account', 'issue_cert'],
      run: (ctx) => ({ url: `https://${ctx.input.serviceName}.apps.example.com`, certificate: ctx.deps.issue_cert.serial }),
    });
}
