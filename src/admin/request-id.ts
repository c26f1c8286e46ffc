const SANE_REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * The request id of a response: the incoming `X-Request-Id` when it is 1-128
 * characters of `A-Z a-z 0-9 . _ -`, otherwise a fresh `req_<32 hex>`.
 *
 * @example
 * ```ts
 * resolveRequestId('abc-123') // 'abc-123'
 * resolveRequestId('<script>') // 'req_3f9a…'
 * ```
 */
export function resolveRequestId(incoming: string | null | undefined): string {
  if (typeof incoming === 'string' && SANE_REQUEST_ID.test(incoming)) return incoming;
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  let hex = '';
  for (const byte of bytes) hex += byte.toString(16).padStart(2, '0');
  return `req_${hex}`;
}
