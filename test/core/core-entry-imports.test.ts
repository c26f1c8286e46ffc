import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const dist = join(import.meta.dirname, '..', '..', 'dist');

/** Bare specifiers imported by a built file and, transitively, by the chunks it imports. */
function importsOf(file: string, seen = new Set<string>()): Set<string> {
  const found = new Set<string>();
  if (seen.has(file)) return found;
  seen.add(file);
  const text = readFileSync(join(dist, file), 'utf8');
  const re = /(?:import|export)\s*(?:[^'"]*?\sfrom\s*)?['"]([^'"]+)['"]|require\(\s*['"]([^'"]+)['"]\s*\)|import\(\s*['"]([^'"]+)['"]\s*\)/g;
  for (const m of text.matchAll(re)) {
    const spec = m[1] ?? m[2] ?? m[3]!;
    if (spec.startsWith('./')) for (const s of importsOf(spec.slice(2), seen)) found.add(s);
    else found.add(spec);
  }
  return found;
}

describe('the built core entry', () => {
  it('imports nothing but zod and eventemitter3 (ESM and CJS)', () => {
    const files = readdirSync(dist);
    expect(files).toContain('index.js');
    expect(files).toContain('index.cjs');
    for (const entry of ['index.js', 'index.cjs']) {
      const specs = [...importsOf(entry)].map((s) => s.split('/')[0]!);
      expect(specs.length).toBeGreaterThan(0);
      expect(new Set(specs), entry).toEqual(new Set(['zod', 'eventemitter3']));
    }
  });

  it('the memory entry adds nothing but the core', () => {
    const specs = new Set([...importsOf('memory.js')].map((s) => s.split('/')[0]!));
    for (const s of specs) expect(['zod', 'eventemitter3']).toContain(s);
  });
});
