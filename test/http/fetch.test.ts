import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createManualClock } from '../../src/core/clock.js';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { silentLogger } from '../../src/core/logger.js';
import { createEngine } from '../../src/engine/workflow-engine.js';
import { createAdminHandler } from '../../src/fetch.js';
import { MemoryWorkflowStore } from '../../src/stores/memory/memory-workflow-store.js';
import { runHttpContract } from '../../src/testing/http-contract.js';
import { openApiResponseChecker } from './openapi-check.js';

const checker = openApiResponseChecker('/api/v1');
runHttpContract('fetch', (engine, options) => createAdminHandler(engine, options), { onExchange: checker.check });

const customPrefix = openApiResponseChecker('/ops');
runHttpContract('fetch with prefix /ops', (engine, options) => createAdminHandler(engine, { ...options, prefix: '/ops/' }), {
  basePath: '/ops',
  onExchange: customPrefix.check,
});

function makeEngine() {
  const clock = createManualClock();
  const wf = defineWorkflow({ name: 'tiny', input: z.object({}), steps: { only: step({ run: async () => ({ ok: true }) }) } });
  return createEngine({ store: new MemoryWorkflowStore({ clock }), workflows: [wf], clock, logger: silentLogger });
}

describe('createAdminHandler', () => {
  it('every contract response matched the OpenAPI document', () => {
    expect(checker.checked()).toBeGreaterThan(100);
  });

  it('refuses to be built without authenticate unless insecureNoAuth is true', () => {
    const engine = makeEngine();
    expect(() => createAdminHandler(engine, {})).toThrowError(expect.objectContaining({ code: 'validation' }));
    expect(() => createAdminHandler(engine, { insecureNoAuth: false })).toThrowError(/authenticate/);
    expect(() => createAdminHandler(engine, { insecureNoAuth: true })).not.toThrow();
  });

  it('insecureNoAuth serves the admin routes to an anonymous admin', async () => {
    const engine = makeEngine();
    const started = await engine.start('tiny', { tenantId: 't1', input: {} });
    const handler = createAdminHandler(engine, { insecureNoAuth: true });
    const response = await handler(new Request(`http://localhost/api/v1/admin/provisioning/workflows/${started.id}/rollback`, { method: 'POST' }));
    expect(response.status).toBe(200);
    const body = (await response.json()) as { data: { history: { kind: string; actor: string | null }[] } };
    expect(body.data.history.find((h) => h.kind === 'admin')?.actor).toBe('anonymous');
    const tenant = await handler(new Request('http://localhost/api/v1/provisioning/workflows'));
    expect(tenant.status).toBe(403);
  });

  it('answers the error envelope outside the prefix and for unknown routes', async () => {
    const handler = createAdminHandler(makeEngine(), { authenticate: () => null });
    for (const url of ['http://localhost/elsewhere', 'http://localhost/api/v1', 'http://localhost/api/v1/nothing']) {
      const response = await handler(new Request(url));
      expect(response.status).toBe(404);
      expect(response.headers.get('content-type')).toBe('application/json; charset=utf-8');
      expect(await response.json()).toEqual({ error: { code: 'not_found', message: expect.any(String), request_id: expect.any(String) } });
    }
  });

  it('uses the host\'s isAdmin, tenantOf, actorOf and redact', async () => {
    const engine = makeEngine();
    const started = await engine.start('tiny', { tenantId: 'acme', input: {} });
    await engine.drain();
    type Claims = { sub: string; org: string; roles: string[] };
    const handler = createAdminHandler<Claims>(engine, {
      authenticate: (request) => ({ sub: 'u-1', org: 'acme', roles: request.headers.get('x-role') === 'ops' ? ['ops'] : [] }),
      isAdmin: (principal) => principal.roles.includes('ops'),
      tenantOf: (principal) => principal.org,
      actorOf: (principal) => `user:${principal.sub}`,
      redact: (value, location) => (location.field === 'output' ? 'hidden' : value),
    });
    const own = await handler(new Request(`http://localhost/api/v1/provisioning/workflows/${started.id}`));
    expect(own.status).toBe(200);
    expect(((await own.json()) as { data: { steps: { output: unknown }[] } }).data.steps[0]!.output).toBe('hidden');
    expect((await handler(new Request('http://localhost/api/v1/admin/provisioning/workflows'))).status).toBe(403);
    const rollback = await handler(
      new Request(`http://localhost/api/v1/admin/provisioning/workflows/${started.id}/rollback`, { method: 'POST', headers: { 'x-role': 'ops' } }),
    );
    const body = (await rollback.json()) as { data: { history: { kind: string; actor: string | null }[] } };
    expect(body.data.history.find((h) => h.kind === 'admin')?.actor).toBe('user:u-1');
  });

  it('reads an OAuth-style scope string with the default isAdmin', async () => {
    const handler = createAdminHandler(makeEngine(), { authenticate: () => ({ sub: 'svc', scope: 'openid admin:provisioning' }) });
    expect((await handler(new Request('http://localhost/api/v1/admin/provisioning/workflows'))).status).toBe(200);
  });

  it('stops reading a chunked body as soon as it passes the limit', async () => {
    const handler = createAdminHandler(makeEngine(), { authenticate: () => null, maxBodyBytes: 1024 });
    let pulled = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled++;
        controller.enqueue(new Uint8Array(512).fill(0x20));
        if (pulled > 1000) controller.close();
      },
    });
    const response = await handler(
      new Request('http://localhost/api/v1/provisioning/callback', { method: 'POST', body: stream, headers: { 'content-type': 'application/json' }, duplex: 'half' } as RequestInit),
    );
    expect(response.status).toBe(413);
    expect(pulled).toBeLessThan(10);
  });
});
