/** Mounting the admin and tenant API into a Hono app (Node, Bun, Deno or an edge runtime). */
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { honoAdmin } from '../src/hono.js';
import { authenticateBearer, createExampleEngine } from './shared-engine.js';

const { engine } = await createExampleEngine();
const app = new Hono();
app.get('/healthz', (c) => c.text('ok'));
app.route('/', honoAdmin(engine, { authenticate: authenticateBearer })); // serves /api/v1/...
serve({ fetch: app.fetch, port: 3000 });
