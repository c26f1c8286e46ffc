/**
 * Builds the bench as the package is built (`tsup`, no `keepNames`), so that
 * it measures the code users run: `tsx`, which runs the sources directly,
 * wraps every function it creates in a naming helper, a cost on every step.
 */
import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { run: 'bench/run.ts', 'pg-worker': 'bench/pg-worker.ts', compare: 'bench/compare.ts' },
  outDir: '.bench-dist',
  format: ['esm'],
  target: 'node20',
  platform: 'node',
  splitting: true,
  sourcemap: true,
  clean: true,
  dts: false,
  // Dependencies stay imports from node_modules, as in a host app.
  skipNodeModulesBundle: true,
});
