/**
 * The status rules (README, "Status model") as checks over stored state: a
 * workflow's history replayed against the transition tables and against what
 * each transition requires (who may make it, in which workflow status), and
 * the row invariants that hold whenever no transaction is half-applied.
 *
 * Every check returns a list of violations (empty when the state is legal),
 * so a test can report all of them with the workflow they belong to.
 */
import type { WorkflowDefinition } from '../../../src/core/define-workflow.js';
import { NON_TERMINAL_STEP_STATUSES, STEP_TRANSITIONS, isStepStatus, type StepStatus } from '../../../src/core/step-status.js';
import { WORKFLOW_TRANSITIONS, isWorkflowStatus, type WorkflowStatus } from '../../../src/core/workflow-status.js';
import type { HistoryRecord, StepRecord, WorkflowRecord, WorkflowStore } from '../../../src/storage/workflow-store.js';

/** A workflow as stored: its row, its steps and its history. */
export interface StoredWorkflow {
  workflow: WorkflowRecord;
  steps: StepRecord[];
  history: HistoryRecord[];
}

/** Reads a workflow's row, steps and history straight from a store. */
export async function readStored(store: WorkflowStore, id: string): Promise<StoredWorkflow> {
  const [workflow, steps, history] = await Promise.all([store.getWorkflow(id), store.getSteps(id), store.getHistory(id)]);
  if (!workflow) throw new Error(`workflow ${id} is not in the store`);
  return { workflow, steps, history };
}

/** Which steps of each workflow type have a `compensate` handler. */
export type Compensable = (type: string) => ReadonlySet<string>;

/** {@link Compensable} from the definitions a test registered. */
export function compensableFrom(definitions: readonly WorkflowDefinition<any, any>[]): Compensable {
  const byType = new Map<string, Set<string>>();
  for (const def of definitions) {
    byType.set(def.name, new Set(def.steps.filter((s) => s.definition.compensate !== undefined).map((s) => s.name)));
  }
  return (type) => byType.get(type) ?? new Set();
}

const FORWARD_TARGETS: readonly StepStatus[] = ['running', 'completed', 'failed', 'waiting_callback', 'waiting_poll', 'pending'];
const ROLLBACK_STEP_STATUSES: readonly StepStatus[] = ['compensating', 'compensated', 'compensation_failed'];
const FINISHED_STEP_STATUSES: readonly StepStatus[] = ['completed', 'failed', 'skipped', 'compensated', 'compensation_failed'];

/**
 * Replays the history and checks every row:
 * - each workflow and step transition is in the transition tables, and its
 *   `from` is the status the replay is in (no missing or invented rows);
 *   the replay ends in the stored statuses;
 * - forward step moves happen only while the workflow is pending, running or
 *   failed (never after force-complete or once a rollback began), and a claim
 *   (`pending -> running`) only while it is running;
 * - `failed -> pending` directly follows an admin `retry_step` of that step;
 * - `-> skipped` happens only in the block of a `force_complete` or `rollback`;
 * - a workflow enters `rolling_back` only right after an admin `rollback` row;
 *   it is `completed` only when every step is completed or skipped, or by
 *   force-complete; `failed` only with a failed step; `rolled_back` only with
 *   nothing left to undo;
 * - compensation moves happen only while rolling back, each compensation
 *   starts on the latest-completed step still to undo (reverse completion
 *   order), and no step completes twice.
 */
export function historyViolations(stored: StoredWorkflow, compensable: Compensable): string[] {
  const { workflow, steps, history } = stored;
  const where = (h: HistoryRecord) => `${workflow.id} history #${h.seq} (${h.kind} ${h.stepName ?? ''} ${h.from ?? 'null'} -> ${h.to ?? 'null'}${h.action ? ` ${h.action}` : ''})`;
  const out: string[] = [];
  const undoable = compensable(workflow.type);
  const seqOf = new Map(steps.map((s) => [s.name, s.completionSeq]));
  // Widened on purpose: the loop assigns it, and a plain `= null` would narrow it to null.
  let wf = null as WorkflowStatus | null;
  const st = new Map<string, StepStatus>(steps.map((s) => [s.name, 'pending']));
  const completions = new Map<string, number>();
  /** Rows since the last admin row: the admin action, and whether only workflow/skip rows followed it. */
  let block: { action: string | null; clean: boolean; stepName: string | null } = { action: null, clean: false, stepName: null };
  let previous: HistoryRecord | null = null;
  for (let i = 0; i < history.length; i++) {
    const h = history[i]!;
    if (i > 0 && h.seq <= history[i - 1]!.seq) out.push(`${where(h)}: seq does not increase`);
    if (h.kind === 'admin') {
      block = { action: h.action, clean: true, stepName: h.stepName };
      previous = h;
      continue;
    }
    if (h.kind === 'workflow') {
      const to = h.to;
      if (!isWorkflowStatus(to)) {
        out.push(`${where(h)}: unknown workflow status`);
      } else if (wf === null) {
        if (h.from !== null || to !== 'pending') out.push(`${where(h)}: the first workflow row must be null -> pending`);
        wf = to;
      } else {
        if (h.from !== wf) out.push(`${where(h)}: replayed workflow status is ${wf}`);
        if (!WORKFLOW_TRANSITIONS[wf].includes(to)) out.push(`${where(h)}: not in WORKFLOW_TRANSITIONS`);
        if (to === 'rolling_back' && !(previous?.kind === 'admin' && previous.action === 'rollback')) {
          out.push(`${where(h)}: rolling_back without an admin rollback row just before`);
        }
        if (to === 'completed') {
          const allDone = [...st.values()].every((s) => s === 'completed' || s === 'skipped');
          const forced = block.action === 'force_complete' && block.clean;
          if (!allDone && !forced) out.push(`${where(h)}: completed while steps are ${JSON.stringify(Object.fromEntries(st))}`);
        }
        if (to === 'failed' && ![...st.values()].includes('failed')) out.push(`${where(h)}: failed without a failed step`);
        if (to === 'rolled_back') {
          const left = [...st].filter(([n, s]) => (s === 'completed' && undoable.has(n)) || s === 'compensating' || s === 'compensation_failed');
          if (left.length > 0) out.push(`${where(h)}: rolled back with ${JSON.stringify(left)} still to undo`);
        }
        wf = to;
      }
      previous = h;
      continue;
    }
    if (h.kind === 'step') {
      const name = h.stepName ?? '';
      const cur = st.get(name);
      const to = h.to;
      if (cur === undefined) {
        out.push(`${where(h)}: unknown step`);
      } else if (!isStepStatus(to)) {
        out.push(`${where(h)}: unknown step status`);
      } else {
        if (h.from !== cur) out.push(`${where(h)}: replayed step status is ${cur}`);
        if (!STEP_TRANSITIONS[cur].includes(to)) out.push(`${where(h)}: not in STEP_TRANSITIONS`);
        if (to === 'skipped') {
          if (!(block.clean && (block.action === 'force_complete' || block.action === 'rollback'))) {
            out.push(`${where(h)}: skipped outside a force_complete or rollback`);
          }
        } else if (ROLLBACK_STEP_STATUSES.includes(to)) {
          if (wf !== 'rolling_back') out.push(`${where(h)}: compensation move while the workflow is ${wf}`);
          if (to === 'compensating') {
            // Reverse completion order: no step completed later may still be in place.
            const mine = seqOf.get(name) ?? 0;
            const later = [...st].filter(
              ([n, s]) => n !== name && ((s === 'completed' && undoable.has(n)) || s === 'compensation_failed') && (seqOf.get(n) ?? 0) > mine,
            );
            if (later.length > 0) out.push(`${where(h)}: compensating before ${JSON.stringify(later.map(([n]) => n))}, which completed later`);
          }
        } else if (FORWARD_TARGETS.includes(to)) {
          if (cur === 'failed' && to === 'pending') {
            if (!(previous?.kind === 'admin' && previous.action === 'retry_step' && previous.stepName === name)) {
              out.push(`${where(h)}: failed -> pending without an admin retry_step just before`);
            }
          }
          const allowed: readonly (WorkflowStatus | null)[] = to === 'running' && cur === 'pending' ? ['running'] : ['pending', 'running', 'failed'];
          if (!allowed.includes(wf)) out.push(`${where(h)}: forward move while the workflow is ${wf}`);
          if (to === 'completed') {
            const n = (completions.get(name) ?? 0) + 1;
            completions.set(name, n);
            if (n > 1) out.push(`${where(h)}: the step completed a second time`);
          }
        }
        st.set(name, to);
      }
      block.clean &&= to === 'skipped';
      previous = h;
      continue;
    }
    // A note changes no status.
    previous = h;
  }
  if (wf !== workflow.status) out.push(`${workflow.id}: history replays to workflow status ${wf}, stored ${workflow.status}`);
  for (const s of steps) {
    if (st.get(s.name) !== s.status) out.push(`${workflow.id}/${s.name}: history replays to ${st.get(s.name)}, stored ${s.status}`);
  }
  return out;
}

/**
 * Row invariants of a workflow at rest (no transaction half-applied):
 * retry counts add up, finished steps hold no lease, due time or token,
 * completed steps have distinct completion numbers, a step that started has
 * its dependencies completed, and the workflow status agrees with its steps.
 * With `live`, a workflow that claims to be in progress must have work that
 * can still move it (a due, running or waiting step; a compensation).
 */
export function rowViolations(stored: StoredWorkflow, compensable: Compensable, options: { live?: boolean } = {}): string[] {
  const { workflow, steps } = stored;
  const out: string[] = [];
  const id = workflow.id;
  const undoable = compensable(workflow.type);
  const byName = new Map(steps.map((s) => [s.name, s]));
  const sum = steps.reduce((n, s) => n + s.retryCount, 0);
  if (workflow.retryCount !== sum) out.push(`${id}: workflow retryCount ${workflow.retryCount} != sum of steps ${sum}`);
  const seqs = new Set<number>();
  for (const s of steps) {
    const at = `${id}/${s.name} (${s.status})`;
    if (FINISHED_STEP_STATUSES.includes(s.status)) {
      if (s.leaseToken !== null || s.leaseExpiresAt !== null) out.push(`${at}: holds a lease`);
      if (s.dueAt !== null) out.push(`${at}: has a due time`);
    }
    if (s.callbackTokenHash !== null && s.status !== 'running' && s.status !== 'waiting_callback') out.push(`${at}: holds a callback token`);
    if (s.status === 'completed' || ROLLBACK_STEP_STATUSES.includes(s.status)) {
      if (s.completionSeq === null) out.push(`${at}: no completion number`);
      else if (seqs.has(s.completionSeq)) out.push(`${at}: completion number ${s.completionSeq} used twice`);
      else seqs.add(s.completionSeq);
      if (s.completedAt === null) out.push(`${at}: no completedAt`);
    }
    const started = ['running', 'waiting_callback', 'waiting_poll', 'completed', 'failed', ...ROLLBACK_STEP_STATUSES].includes(s.status);
    const ready = s.status === 'pending' && s.dueAt !== null;
    if (started || ready) {
      for (const d of s.dependsOn) {
        const dep = byName.get(d);
        if (!dep || !(dep.status === 'completed' || ROLLBACK_STEP_STATUSES.includes(dep.status))) {
          out.push(`${at}: started or due while its dependency ${d} is ${dep?.status ?? 'missing'}`);
        }
      }
    }
  }
  const count = (statuses: readonly StepStatus[]) => steps.filter((s) => statuses.includes(s.status)).length;
  switch (workflow.status) {
    case 'completed':
      if (count(NON_TERMINAL_STEP_STATUSES) > 0) out.push(`${id}: completed with unfinished steps`);
      if (count(ROLLBACK_STEP_STATUSES) > 0) out.push(`${id}: completed with compensated steps`);
      break;
    case 'rolled_back':
      if (count(NON_TERMINAL_STEP_STATUSES) > 0) out.push(`${id}: rolled back with unfinished steps`);
      if (count(['compensating', 'compensation_failed']) > 0 || steps.some((s) => s.status === 'completed' && undoable.has(s.name))) {
        out.push(`${id}: rolled back with steps still to undo`);
      }
      break;
    case 'rolling_back':
      if (count(NON_TERMINAL_STEP_STATUSES) > 0) out.push(`${id}: rolling back with unfinished steps`);
      if (count(['compensating']) !== 1) out.push(`${id}: rolling back with ${count(['compensating'])} compensating steps (want exactly 1)`);
      break;
    case 'rollback_failed':
      if (count(['compensation_failed']) !== 1 || count(['compensating']) !== 0) out.push(`${id}: rollback_failed without exactly one compensation_failed step`);
      break;
    case 'failed':
      if (count(['failed']) === 0) out.push(`${id}: failed without a failed step`);
      break;
    case 'pending':
    case 'running':
      if (count(ROLLBACK_STEP_STATUSES) > 0) out.push(`${id}: ${workflow.status} with compensated steps`);
      if (options.live) {
        const active = steps.some(
          (s) => s.status === 'running' || s.status === 'waiting_callback' || s.status === 'waiting_poll' || (s.status === 'pending' && s.dueAt !== null),
        );
        if (!active) {
          out.push(`${id}: ${workflow.status} but no step can move (${steps.map((s) => `${s.name}:${s.status}`).join(' ')}): stuck until an operator acts`);
        }
      }
      break;
  }
  return out;
}

/** Both checks over one stored workflow. */
export function violations(stored: StoredWorkflow, compensable: Compensable, options: { live?: boolean } = {}): string[] {
  return [...historyViolations(stored, compensable), ...rowViolations(stored, compensable, options)];
}

/** A short, stable rendering of a workflow's statuses, for failure messages. */
export function describeStored(stored: StoredWorkflow): string {
  return `${stored.workflow.id} ${stored.workflow.status} [${stored.steps.map((s) => `${s.name}:${s.status}`).join(' ')}]`;
}
