import type { Express } from 'express';
import supertest from 'supertest';
import type { HttpContractApp } from '../../src/testing/http-contract.js';

/** Drives an Express app with supertest through the contract suite's `Request`/`Response` shape. */
export function supertestApp(app: Express): HttpContractApp {
  const agent = supertest(app);
  return async (request) => {
    const url = new URL(request.url);
    const method = request.method.toLowerCase() as 'get' | 'post' | 'put' | 'delete' | 'patch';
    let test = agent[method](`${url.pathname}${url.search}`);
    request.headers.forEach((value, key) => {
      test = test.set(key, value);
    });
    const body = Buffer.from(await request.arrayBuffer());
    // The bytes go out as they are: no JSON serialization of the Buffer by superagent.
    if (body.length > 0) test = test.serialize((data: unknown) => data as string).send(body);
    const response = await test.buffer(true).parse((res, done) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(Buffer.from(chunk)));
      res.on('end', () => done(null, Buffer.concat(chunks).toString('utf8')));
    });
    const headers = new Headers();
    for (const [key, value] of Object.entries(response.headers as Record<string, string | string[]>)) {
      headers.set(key, Array.isArray(value) ? value.join(', ') : value);
    }
    return new Response(response.body as string, { status: response.status, headers });
  };
}
