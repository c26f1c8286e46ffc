import express from 'express';
import supertest from 'supertest';
import { describe, expect, it } from 'vitest';
import { expressAdmin } from '../../src/express.js';
import { runHttpContract } from '../../src/testing/http-contract.js';
import { openApiResponseChecker } from './openapi-check.js';
import { supertestApp } from './supertest-app.js';

const atRoot = openApiResponseChecker('/api/v1');
runHttpContract(
  'express, mounted at the root',
  (engine, options) => {
    const app = express();
    app.get('/health', (_req, res) => void res.send('ok'));
    app.use(expressAdmin(engine, options));
    return supertestApp(app);
  },
  { onExchange: atRoot.check },
);

const underPath = openApiResponseChecker('/api/v1');
const parsedByHost = 'express.json() answers it before the router runs (the host\'s error handler owns that response)';
runHttpContract(
  'express, mounted under /api/v1 after express.json()',
  (engine, options) => {
    const app = express();
    app.use(express.json());
    app.use('/api/v1', expressAdmin(engine, options));
    return supertestApp(app);
  },
  {
    onExchange: underPath.check,
    skip: {
      'malformed JSON is 422 json_invalid': parsedByHost,
      'a body that is not UTF-8 is 422 json_invalid': parsedByHost,
    },
  },
);

describe('expressAdmin', () => {
  it('checked every contract response against the OpenAPI document', () => {
    expect(atRoot.checked()).toBeGreaterThan(100);
    expect(underPath.checked()).toBeGreaterThan(100);
  });

  it('leaves the host\'s other routes alone, even under the same path', async () => {
    const app = express();
    app.use('/api/v1', expressAdmin({} as never, { authenticate: () => null }));
    app.get('/api/v1/users', (_req, res) => void res.json({ users: [] }));
    const users = await supertest(app).get('/api/v1/users');
    expect(users.status).toBe(200);
    expect(users.body).toEqual({ users: [] });
    const workflows = await supertest(app).get('/api/v1/provisioning/workflows');
    expect(workflows.status).toBe(401);
    expect(workflows.body.error.code).toBe('unauthorized');
  });

  it('throws at once without authenticate', () => {
    expect(() => expressAdmin({} as never, {})).toThrowError(/authenticate/);
  });
});
