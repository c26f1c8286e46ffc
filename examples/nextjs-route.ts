/**
 * A Next.js App Router catch-all route handler, e.g. `app/api/v1/[...path]/route.ts`:
 * the fetch handler takes a `Request` and returns a `Response`, which is all a
 * route handler is. Run the worker in a long-lived process (not in a serverless
 * function); this route only serves the API.
 */
import { createAdminHandler } from '../src/fetch.js';
import { authenticateBearer, createExampleEngine } from './shared-engine.js';

const { engine } = await createExampleEngine();
const handler = createAdminHandler(engine, { authenticate: authenticateBearer });

export const GET = (request: Request): Promise<Response> => handler(request);
export const POST = (request: Request): Promise<Response> => handler(request);
export const dynamic = 'force-dynamic';
