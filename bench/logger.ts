/**
 * The engines' logger in the bench: warnings and errors go to stderr and are
 * counted (a run that logged any says so), except once cleanup has begun,
 * when connections failing is expected.
 */
import type { Logger } from '../src/index.js';
import { shuttingDown } from './cleanup.js';

let logged = 0;

/** Warnings and errors logged by engines so far. */
export function loggedProblems(): number {
  return logged;
}

export const benchLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: (message, context) => report('warn', message, context),
  error: (message, context) => report('error', message, context),
};

function report(level: 'warn' | 'error', message: string, context: Record<string, unknown> | undefined): void {
  if (shuttingDown()) return;
  logged++;
  process.stderr.write(`bench: engine ${level}: ${message}${context ? ` ${JSON.stringify(context)}` : ''}\n`);
}
