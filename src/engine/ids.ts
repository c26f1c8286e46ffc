/**
 * Workflow ids.
 *
 * An id is `wf_` and 32 hex digits: the creation time in milliseconds (12
 * digits), then 80 random bits (20 digits). Ids made close in time sort
 * together, so the workflows in flight have their rows and index entries
 * (the workflow's primary key, its steps' and its history's, all led by the
 * workflow id) on a few pages at the end of each index instead of one page
 * per workflow anywhere in it: a transaction, or a group-commit batch, dirties
 * and writes fewer pages. The random part keeps ids unguessable and unique.
 */

import { randomBytes } from './tokens.js';

/**
 * The workflow ids the API accepts (1 to 128 of `A-Z a-z 0-9 . _ : -`): every
 * id {@link newWorkflowId} makes, and the bound on ids that arrive from
 * outside (a path, a callback token) before they reach a store.
 */
export const WORKFLOW_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

const TIME_DIGITS = 12;
/** 80 random bits: 20 hex digits. */
const RANDOM_BYTES = 10;
const HEX = '0123456789abcdef';
/** 16^12 ms: the time part wraps after about 8,900 years. */
const TIME_RANGE = 16 ** TIME_DIGITS;

/** A new workflow id for a workflow created at `createdAtMs` (epoch ms). */
export function newWorkflowId(createdAtMs: number): string {
  const ms = Number.isFinite(createdAtMs) && createdAtMs > 0 ? Math.floor(createdAtMs) % TIME_RANGE : 0;
  let id = `wf_${ms.toString(16).padStart(TIME_DIGITS, '0')}`;
  // From the same pooled CSPRNG as the engine's tokens.
  for (const b of randomBytes(RANDOM_BYTES)) id += HEX[b >> 4]! + HEX[b & 15]!;
  return id;
}
