import type { RedactFunction } from './admin-config.js';

/** What a redacted value is replaced with. */
export const REDACTED = '[REDACTED]';

/**
 * Fragments of a key (lower-cased, with `_`, `-`, `.` and spaces removed) that
 * mark its value as a secret. `credential` also covers `credentials`, `token`
 * covers `access_token`, `refreshToken`, …
 */
const SECRET_KEY_FRAGMENTS = [
  'credential',
  'password',
  'passwd',
  'passphrase',
  'secret',
  'token',
  'apikey',
  'privatekey',
  'accesskey',
  'authorization',
  'cookie',
] as const;

/** Deeper values are replaced whole: a response never recurses without bound. */
const MAX_DEPTH = 64;

/**
 * True when a key names a secret (`password`, `api_key`, `apiKey`,
 * `client_secret`, `credentials`, `access_token`, …).
 *
 * @example
 * ```ts
 * isSecretKey('api_key') // true
 * isSecretKey('endpoint') // false
 * ```
 */
export function isSecretKey(key: string): boolean {
  const normalized = key.toLowerCase().replace(/[\s_.-]/g, '');
  return SECRET_KEY_FRAGMENTS.some((fragment) => normalized.includes(fragment));
}

/**
 * The default redaction: returns a copy of `value` in which the value of every
 * key that {@link isSecretKey} matches, at any depth, is `"[REDACTED]"`.
 * Never mutates its argument.
 *
 * @example
 * ```ts
 * redactSecrets({ host: 'db.internal', credentials: { password: 'p' } })
 * // { host: 'db.internal', credentials: '[REDACTED]' }
 * ```
 */
export const redactSecrets: RedactFunction = (value) => redactValue(value, 0);

function redactValue(value: unknown, depth: number): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (depth >= MAX_DEPTH) return REDACTED;
  if (Array.isArray(value)) return value.map((item) => redactValue(item, depth + 1));
  if (value instanceof Date) return value;
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    // defineProperty, not assignment: a "__proto__" key stays a plain key.
    Object.defineProperty(copy, key, {
      value: isSecretKey(key) ? REDACTED : redactValue(item, depth + 1),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return copy;
}
