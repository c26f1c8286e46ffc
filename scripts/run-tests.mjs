#!/usr/bin/env node
// The whole test suite: type-check, build, package lint, then vitest.
// Ends with one line `N passed, N failed` counted from vitest's JSON report.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const report = join(root, '.tmp', 'vitest-report.json');
const extra = process.argv.slice(2);

function run(label, command, args) {
  console.log(`\n> ${label}: ${command} ${args.join(' ')}`);
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: process.env });
  return result.status ?? 1;
}

const steps = [
  ['typecheck', 'npx', ['tsc', '-p', 'tsconfig.json', '--noEmit']],
  ['lint', 'npx', ['eslint', 'src', 'test', 'examples', 'bench', 'scripts']],
  ['build', 'npx', ['tsup']],
  ['publint', 'npx', ['publint', '--strict']],
  ['attw', 'npx', ['attw', '--pack', '.', '--profile', 'node16']],
];
for (const [label, command, args] of steps) {
  const code = run(label, command, args);
  if (code !== 0) {
    console.error(`\n${label} failed (exit ${code})`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
}

mkdirSync(join(root, '.tmp'), { recursive: true });
rmSync(report, { force: true });
const code = run('vitest', 'npx', ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...extra]);
let passed = 0;
let failed = 0;
let skipped = 0;
try {
  const json = JSON.parse(readFileSync(report, 'utf8'));
  passed = json.numPassedTests ?? 0;
  // A file that failed to load has no failed test of its own: count it as one failure.
  const brokenFiles = (json.testResults ?? []).filter(
    (r) => r.status === 'failed' && !(r.assertionResults ?? []).some((a) => a.status === 'failed'),
  ).length;
  failed = (json.numFailedTests ?? 0) + brokenFiles;
  skipped = (json.numPendingTests ?? 0) + (json.numTodoTests ?? 0);
} catch (err) {
  console.error(`could not read the vitest report: ${err.message}`);
  failed = Math.max(failed, 1);
}
if (code !== 0 && failed === 0) failed = 1;
console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(code !== 0 || failed > 0 || passed === 0 ? 1 : 0);
