import type { BodyRead } from '../../admin/admin-api.js';

/**
 * Reads a request body as UTF-8 text, stopping (and cancelling the stream) as
 * soon as it exceeds `maxBytes`, so a huge body is never held in memory.
 *
 * @example
 * ```ts
 * await readBody(new Request('http://x', { method: 'POST', body: '{}' }), 65536)
 * // { kind: 'text', text: '{}', contentType: 'text/plain;charset=UTF-8' }
 * ```
 */
export async function readBody(request: Request, maxBytes: number): Promise<BodyRead> {
  const declared = request.headers.get('content-length');
  if (declared !== null && /^\d+$/.test(declared) && Number(declared) > maxBytes) {
    await request.body?.cancel().catch(() => {});
    return { kind: 'too_large' };
  }
  if (!request.body) return { kind: 'empty' };
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      return { kind: 'too_large' };
    }
    chunks.push(value);
  }
  if (total === 0) return { kind: 'empty' };
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return { kind: 'invalid_encoding' };
  }
  return { kind: 'text', text, contentType: request.headers.get('content-type') };
}
