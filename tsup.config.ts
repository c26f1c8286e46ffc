import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    memory: 'src/memory.ts',
    testing: 'src/testing.ts',
    kysely: 'src/kysely.ts',
    fetch: 'src/fetch.ts',
    express: 'src/express.ts',
    fastify: 'src/fastify.ts',
    hono: 'src/hono.ts',
  },
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'node20',
  splitting: true,
  treeshake: true,
  external: ['kysely', 'hono', 'express', 'fastify', '@hono/node-server', 'vitest'],
});
