import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, describe, expect, it } from 'vitest';
import { fastifyAdmin } from '../../src/fastify.js';
import { runHttpContract, type HttpContractApp } from '../../src/testing/http-contract.js';
import { openApiResponseChecker } from './openapi-check.js';

const apps: FastifyInstance[] = [];
afterAll(async () => {
  await Promise.all(apps.map((app) => app.close()));
});

/** Drives a Fastify app with `inject` through the contract suite's `Request`/`Response` shape. */
function injectApp(app: FastifyInstance): HttpContractApp {
  apps.push(app);
  return async (request) => {
    const url = new URL(request.url);
    const headers: Record<string, string> = {};
    request.headers.forEach((value, key) => {
      headers[key] = value;
    });
    const body = Buffer.from(await request.arrayBuffer());
    const response = await app.inject({
      method: request.method as 'GET',
      url: `${url.pathname}${url.search}`,
      headers,
      ...(body.length > 0 ? { payload: body } : {}),
    });
    const responseHeaders = new Headers();
    for (const [key, value] of Object.entries(response.headers)) {
      if (value !== undefined) responseHeaders.set(key, Array.isArray(value) ? value.join(', ') : String(value));
    }
    return new Response(new Uint8Array(response.rawPayload), { status: response.statusCode, headers: responseHeaders });
  };
}

const badUrl = {
  'a path parameter with malformed percent-encoding is 422':
    'Fastify answers a URL that does not percent-decode with its own 400 (FST_ERR_BAD_URL) before any route runs; a host can reshape it with the `frameworkErrors` server option',
};

const atRoot = openApiResponseChecker('/api/v1');
runHttpContract(
  'fastify, registered without a prefix',
  async (engine, options) => {
    const app = Fastify();
    app.get('/health', async () => 'ok');
    await app.register(fastifyAdmin(engine, options));
    await app.ready();
    return injectApp(app);
  },
  { onExchange: atRoot.check, skip: badUrl },
);

const underPrefix = openApiResponseChecker('/api/v1');
runHttpContract(
  'fastify, registered with prefix /api/v1',
  async (engine, options) => {
    const app = Fastify();
    await app.register(fastifyAdmin(engine, options), { prefix: '/api/v1' });
    await app.ready();
    return injectApp(app);
  },
  { onExchange: underPrefix.check, skip: badUrl },
);

describe('fastifyAdmin', () => {
  it('checked every contract response against the OpenAPI document', () => {
    expect(atRoot.checked()).toBeGreaterThan(100);
    expect(underPrefix.checked()).toBeGreaterThan(100);
  });

  it('keeps the host\'s JSON parsing and routes outside its own context', async () => {
    const app = Fastify();
    await app.register(fastifyAdmin({} as never, { authenticate: () => null }), { prefix: '/api/v1' });
    app.post('/api/v1/echo', async (request) => ({ got: request.body }));
    await app.ready();
    apps.push(app);
    const echo = await app.inject({ method: 'POST', url: '/api/v1/echo', payload: { a: 1 } });
    expect(echo.json()).toEqual({ got: { a: 1 } });
    const workflows = await app.inject({ method: 'GET', url: '/api/v1/provisioning/workflows' });
    expect(workflows.statusCode).toBe(401);
    expect(workflows.json().error.code).toBe('unauthorized');
  });

  it('answers a body over the limit with its own 413, never Fastify\'s', async () => {
    const app = Fastify({ bodyLimit: 1024 });
    await app.register(fastifyAdmin({} as never, { authenticate: () => null }));
    await app.ready();
    apps.push(app);
    const response = await app.inject({ method: 'POST', url: '/api/v1/provisioning/callback', headers: { 'content-type': 'application/json' }, payload: 'x'.repeat(2 * 1024 * 1024) });
    expect(response.statusCode).toBe(413);
    expect(response.json()).toEqual({ error: { code: 'payload_too_large', message: expect.any(String), request_id: expect.any(String) } });
  });

  it('throws at once without authenticate', () => {
    expect(() => fastifyAdmin({} as never, {})).toThrowError(/authenticate/);
  });
});
