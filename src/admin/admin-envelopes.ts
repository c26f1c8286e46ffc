/**
 * Response envelopes: `{ data, meta }` for 200, `{ error }` for most errors,
 * and FastAPI's `{ detail }` for 422.
 *
 * @module
 */
import { ERROR_CODE_STATUS, type ApiErrorCode, type ErrorResponse, type ValidationErrorItem } from './admin-schemas.js';

/**
 * What a handler answers: plain data that a binding turns into an HTTP
 * response (JSON body, `X-Request-Id` and `Content-Type` added by the binding).
 */
export interface AdminResult {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

/** Generic messages: an error body never carries internals. */
const DEFAULT_MESSAGES: Record<ApiErrorCode, string> = {
  unauthorized: 'authentication required',
  forbidden: 'not allowed',
  not_found: 'not found',
  method_not_allowed: 'method not allowed',
  conflict: 'conflict with the current state',
  payload_too_large: 'request body too large',
  unsupported_media_type: 'request body must be application/json',
  internal_error: 'internal server error',
};

/**
 * A 200 with `{ data, meta: { request_id, ...meta } }`.
 *
 * @example
 * ```ts
 * ok({ accepted: true }, 'req_1') // { status: 200, body: { data: { accepted: true }, meta: { request_id: 'req_1' } } }
 * ```
 */
export function ok(data: unknown, requestId: string, meta: Record<string, unknown> = {}): AdminResult {
  return { status: 200, body: { data, meta: { request_id: requestId, ...meta } } };
}

/** An error envelope with the status of its code. */
export function errorResult(code: ApiErrorCode, requestId: string, message = DEFAULT_MESSAGES[code], headers?: Record<string, string>): AdminResult {
  const body: ErrorResponse = { error: { code, message, request_id: requestId } };
  const result: AdminResult = { status: ERROR_CODE_STATUS[code], body };
  if (headers) result.headers = headers;
  return result;
}

/** A 422 in FastAPI's shape. */
export function validationResult(detail: ValidationErrorItem[]): AdminResult {
  return { status: 422, body: { detail } };
}
