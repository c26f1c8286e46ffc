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

const TIME_DIGITS = 12;
/** 16^12 ms: the time part wraps after about 8,900 years. */
const TIME_RANGE = 16 ** TIME_DIGITS;

/** A new workflow id for a workflow created at `createdAtMs` (epoch ms). */
export function newWorkflowId(createdAtMs: number): string {
  const ms = Number.isFinite(createdAtMs) && createdAtMs > 0 ? Math.floor(createdAtMs) % TIME_RANGE : 0;
  // randomUUID (Web Crypto, a global in Node and edge runtimes) draws from a buffered CSPRNG; its
  // hex digits 12 (the version) and 16 (the variant) are not random and are left out.
  const hex = crypto.randomUUID().replace(/-/g, '');
  return `wf_${ms.toString(16).padStart(TIME_DIGITS, '0')}${hex.slice(0, 12)}${hex.slice(13, 16)}${hex.slice(17, 22)}`;
}
