/**
 * Random tokens and their hashes, with the Web Crypto API (a global in Node 20
 * and every edge runtime), so the core imports no Node module.
 */

const encoder = new TextEncoder();

// Random bytes are drawn from the CSPRNG a few KiB at a time (each byte is used once):
// one getRandomValues call per token costs more than the token itself.
const POOL_SIZE = 4096;
const pool = new Uint8Array(POOL_SIZE);
let poolOffset = POOL_SIZE;

/**
 * `bytes` random bytes, each drawn once. The view may share the pool's memory:
 * read it before drawing again.
 */
export function randomBytes(bytes: number): Uint8Array {
  if (bytes > POOL_SIZE) {
    const buf = new Uint8Array(bytes);
    crypto.getRandomValues(buf);
    return buf;
  }
  if (poolOffset + bytes > POOL_SIZE) {
    crypto.getRandomValues(pool);
    poolOffset = 0;
  }
  const slice = pool.subarray(poolOffset, poolOffset + bytes);
  poolOffset += bytes;
  return slice;
}

/** `bytes` random bytes as base64url (32 bytes = 256 bits). */
export function randomToken(bytes: number): string {
  return toBase64Url(randomBytes(bytes));
}

/** Node's one-shot `hash` (Node 20.12+) or else `createHash`, reached without an import so the core entry stays free of Node modules. */
type NodeHash = (algorithm: string, data: string, encoding: 'hex') => string;
type CreateHash = (algorithm: string) => { update(data: string): { digest(encoding: 'hex'): string } };
const nodeSha256: ((data: string) => string) | undefined = (() => {
  const getBuiltin = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process?.getBuiltinModule;
  const mod = typeof getBuiltin === 'function' ? (getBuiltin('node:crypto') as { hash?: NodeHash; createHash?: CreateHash } | undefined) : undefined;
  // The one-shot form makes no Hash object: a fifth of the time for a token.
  const oneShot = mod?.hash;
  if (typeof oneShot === 'function') return (data) => oneShot('sha256', data, 'hex');
  const createHash = mod?.createHash;
  return typeof createHash === 'function' ? (data) => createHash('sha256').update(data).digest('hex') : undefined;
})();

/**
 * SHA-256 of a token, hex-encoded: what the store keeps instead of the token.
 * Synchronous on Node (a claim mints one per step); Web Crypto elsewhere.
 */
export function hashToken(token: string): string | Promise<string> {
  if (nodeSha256) return nodeSha256(token);
  return crypto.subtle.digest('SHA-256', encoder.encode(token)).then((buf) => {
    let hex = '';
    for (const b of new Uint8Array(buf)) hex += b.toString(16).padStart(2, '0');
    return hex;
  });
}

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const BASE64URL_CODES = Uint8Array.from(BASE64URL, (c) => c.charCodeAt(0));
// ASCII bytes decode to the same characters as UTF-8, in one flat string: building the text a
// character at a time made a chain of partial strings per token, flattened again when hashed.
const ascii = new TextDecoder();
const encoded = new Uint8Array(64);

/** base64url without padding. */
export function toBase64Url(bytes: Uint8Array): string {
  const size = Math.ceil((bytes.length * 4) / 3);
  const out = size <= encoded.length ? encoded : new Uint8Array(size);
  let i = 0;
  let j = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out[j++] = BASE64URL_CODES[n >> 18]!;
    out[j++] = BASE64URL_CODES[(n >> 12) & 63]!;
    out[j++] = BASE64URL_CODES[(n >> 6) & 63]!;
    out[j++] = BASE64URL_CODES[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i]! << 16;
    out[j++] = BASE64URL_CODES[n >> 18]!;
    out[j++] = BASE64URL_CODES[(n >> 12) & 63]!;
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out[j++] = BASE64URL_CODES[n >> 18]!;
    out[j++] = BASE64URL_CODES[(n >> 12) & 63]!;
    out[j++] = BASE64URL_CODES[(n >> 6) & 63]!;
  }
  return ascii.decode(out.subarray(0, j));
}

/** Inverse of {@link toBase64Url}; null for malformed input. */
export function fromBase64Url(text: string): Uint8Array | null {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return null;
  try {
    const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}
