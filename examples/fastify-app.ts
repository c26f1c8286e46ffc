/** Registering the admin and tenant API as a Fastify 5 plugin. */
import Fastify from 'fastify';
import { fastifyAdmin } from '../src/fastify.js';
import { authenticateBearer, createExampleEngine } from './shared-engine.js';

const { engine } = await createExampleEngine();
const app = Fastify({ logger: true });
await app.register(fastifyAdmin(engine, { authenticate: authenticateBearer })); // serves /api/v1/...
app.addHook('onClose', async () => engine.stop());
await app.listen({ port: 3000, host: '127.0.0.1' });
