import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { honoAdmin } from '../../src/hono.js';
import { runHttpContract } from '../../src/testing/http-contract.js';
import { openApiResponseChecker } from './openapi-check.js';

const atRoot = openApiResponseChecker('/api/v1');
runHttpContract(
  'hono, mounted at the root',
  (engine, options) => {
    const app = new Hono();
    app.get('/health', (c) => c.text('ok'));
    app.route('/', honoAdmin(engine, options));
    return async (request) => app.request(request);
  },
  { onExchange: atRoot.check },
);

const underPath = openApiResponseChecker('/svc/admin-api');
runHttpContract(
  'hono, mounted under /svc/admin-api',
  (engine, options) => {
    const app = new Hono();
    app.route('/svc/admin-api', honoAdmin(engine, options));
    return async (request) => app.request(request);
  },
  { basePath: '/svc/admin-api', onExchange: underPath.check },
);

describe('honoAdmin', () => {
  it('checked every contract response against the OpenAPI document', () => {
    expect(atRoot.checked()).toBeGreaterThan(100);
    expect(underPath.checked()).toBeGreaterThan(100);
  });

  it('leaves the host\'s other routes alone, even under the same path', async () => {
    const app = new Hono();
    app.route('/api/v1', honoAdmin({} as never, { authenticate: () => null }));
    app.get('/api/v1/users', (c) => c.json({ users: [] }));
    const users = await app.request('/api/v1/users');
    expect(users.status).toBe(200);
    expect(await users.json()).toEqual({ users: [] });
    expect((await app.request('/api/v1/provisioning/workflows')).status).toBe(401);
  });

  it('takes a body that host middleware already read from Hono\'s cache', async () => {
    const app = new Hono();
    const seen: unknown[] = [];
    app.use('*', async (c, next) => {
      if (c.req.method === 'POST') seen.push(await c.req.json());
      await next();
    });
    app.route('/', honoAdmin({} as never, { authenticate: () => null }));
    const response = await app.request('/api/v1/provisioning/callback', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ status: 'success' }),
    });
    expect(seen).toEqual([{ status: 'success' }]);
    expect(response.status).toBe(422);
    expect(await response.json()).toEqual({ detail: [{ loc: ['body', 'callback_token'], msg: 'Field required', type: 'missing' }] });
  });

  it('throws at once without authenticate', () => {
    expect(() => honoAdmin({} as never, {})).toThrowError(/authenticate/);
  });
});
