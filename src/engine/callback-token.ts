/**
 * Callback tokens: `<workflowId>.<position>.<secret>`. The workflow id and the
 * step's position say where to look (by primary key); only the SHA-256 of the
 * secret is stored, on the step, so a token cannot be rebuilt from the database.
 */
import { WORKFLOW_ID_PATTERN } from './ids.js';

/** The random part of a callback token: 32 bytes, 43 base64url characters. */
export const CALLBACK_SECRET_BYTES = 32;
const CALLBACK_SECRET = /^[A-Za-z0-9_-]{43}$/;
const POSITION = /^(?:0|[1-9][0-9]{0,5})$/;

/** The callback token a step's handler hands out. */
export function callbackToken(workflowId: string, position: number, secret: string): string {
  return `${workflowId}.${position}.${secret}`;
}

/**
 * The parts of a token made by {@link callbackToken}, or `null` for anything
 * else. The workflow id must be one the API accepts ({@link WORKFLOW_ID_PATTERN}):
 * what reaches the store is never more than that.
 */
export function parseCallbackToken(token: string): { workflowId: string; position: number; secret: string } | null {
  const last = token.lastIndexOf('.');
  const middle = last > 0 ? token.lastIndexOf('.', last - 1) : -1;
  if (middle <= 0) return null;
  const workflowId = token.slice(0, middle);
  const secret = token.slice(last + 1);
  const position = token.slice(middle + 1, last);
  if (!CALLBACK_SECRET.test(secret) || !POSITION.test(position) || !WORKFLOW_ID_PATTERN.test(workflowId)) return null;
  return { workflowId, position: Number(position), secret };
}
