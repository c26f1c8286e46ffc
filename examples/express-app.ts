/** Mounting the admin and tenant API into an Express 5 app. */
import express from 'express';
import { expressAdmin } from '../src/express.js';
import { authenticateBearer, createExampleEngine } from './shared-engine.js';

const { engine } = await createExampleEngine();
const app = express();
app.use(express.json()); // optional: the router works with or without a body parser in front
app.use(expressAdmin(engine, { authenticate: authenticateBearer })); // serves /api/v1/...
app.get('/healthz', (_req, res) => {
  res.send('ok');
});
app.listen(3000, () => console.log('http://127.0.0.1:3000/api/v1/openapi.json'));
