import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { callbackToken, parseCallbackToken } from '../../src/engine/callback-token.js';
import { fromBase64Url, hashToken, randomToken, toBase64Url } from '../../src/engine/tokens.js';

describe('tokens', () => {
  it('hashes with SHA-256 (hex), the same as Web Crypto', async () => {
    for (const token of ['', 'a', randomToken(32), 'ü💥'.repeat(40)]) {
      const expected = createHash('sha256').update(token).digest('hex');
      expect(await hashToken(token)).toBe(expected);
      const web = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(token)));
      expect(Buffer.from(web).toString('hex')).toBe(expected);
    }
  });

  it('mints random base64url tokens of the requested size, and round-trips base64url', () => {
    const token = randomToken(32);
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(new Set(Array.from({ length: 100 }, () => randomToken(16))).size).toBe(100);
    const bytes = Uint8Array.from([0, 1, 250, 251, 252, 253, 254, 255]);
    expect(fromBase64Url(toBase64Url(bytes))).toEqual(bytes);
    expect(fromBase64Url('not base64!')).toBeNull();
  });

  it("encodes base64url exactly as Node's Buffer does, for every length and byte value", () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    // Up to 100 bytes: longer than the encoder's reused 64-character buffer.
    for (let length = 0; length <= 100; length++) {
      for (const offset of [0, 100, 156]) {
        const bytes = all.subarray(offset, offset + length);
        expect(toBase64Url(bytes)).toBe(Buffer.from(bytes).toString('base64url'));
        expect(fromBase64Url(toBase64Url(bytes))).toEqual(Uint8Array.from(bytes));
      }
    }
  });

  it('a callback token names its workflow and step position, and parses back to them', () => {
    const secret = randomToken(32);
    const token = callbackToken('wf_00000000000a0123456789abcdef0123', 3, secret);
    expect(token).toBe(`wf_00000000000a0123456789abcdef0123.3.${secret}`);
    expect(parseCallbackToken(token)).toEqual({ workflowId: 'wf_00000000000a0123456789abcdef0123', position: 3, secret });
    // The workflow id is everything before the last two parts, dots included.
    expect(parseCallbackToken(callbackToken('a.b', 0, secret))).toEqual({ workflowId: 'a.b', position: 0, secret });
    expect(parseCallbackToken(callbackToken('wf', 123456, secret))?.position).toBe(123456);
  });

  it('parses nothing but that form', () => {
    const secret = randomToken(32);
    for (const token of [
      secret,
      `.0.${secret}`,
      `wf.${secret}`,
      `wf..${secret}`,
      `wf.00.${secret}`,
      `wf.01.${secret}`,
      `wf.-1.${secret}`,
      `wf.1e3.${secret}`,
      `wf. 1.${secret}`,
      `wf.1234567.${secret}`,
      `wf.0.${secret}A`,
      `wf.0.${secret.slice(1)}`,
      `wf.0.${secret.slice(1)}+`,
      `wf.0.${secret} `,
      'wf.0.',
      '',
      // The workflow id is one the API would accept, or nothing reaches a store.
      `wf\u0000.0.${secret}`,
      `wf id.0.${secret}`,
      `${'w'.repeat(129)}.0.${secret}`,
    ]) {
      expect(parseCallbackToken(token), token).toBeNull();
    }
  });
});
