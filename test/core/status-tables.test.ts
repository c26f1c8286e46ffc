import { describe, expect, it } from 'vitest';
import { assertStepTransition, STEP_STATUSES, STEP_TRANSITIONS } from '../../src/core/step-status.js';
import { assertWorkflowTransition, WORKFLOW_STATUSES, WORKFLOW_TRANSITIONS } from '../../src/core/workflow-status.js';
import { InvalidTransitionError } from '../../src/errors.js';

describe('status transition tables', () => {
  it('match the design for workflows', () => {
    expect(WORKFLOW_TRANSITIONS).toEqual({
      pending: ['running', 'completed', 'rolling_back'],
      running: ['completed', 'failed', 'rolling_back'],
      failed: ['running', 'completed', 'rolling_back'],
      completed: ['rolling_back'],
      rolling_back: ['rolled_back', 'rollback_failed'],
      rollback_failed: ['rolling_back'],
      rolled_back: [],
    });
    expect(WORKFLOW_STATUSES).toHaveLength(7);
  });

  it('only name known statuses', () => {
    for (const targets of Object.values(STEP_TRANSITIONS)) for (const t of targets) expect(STEP_STATUSES).toContain(t);
    for (const targets of Object.values(WORKFLOW_TRANSITIONS)) for (const t of targets) expect(WORKFLOW_STATUSES).toContain(t);
  });

  it('throw InvalidTransitionError on an illegal move', () => {
    expect(() => assertWorkflowTransition('completed', 'running', { workflowId: 'wf_1' })).toThrowError(InvalidTransitionError);
    expect(() => assertStepTransition('completed', 'running')).toThrowError(/illegal step transition completed -> running/);
    expect(() => assertStepTransition('skipped', 'pending')).toThrowError(expect.objectContaining({ code: 'invalid_transition', from: 'skipped', to: 'pending' }));
    expect(() => assertStepTransition('failed', 'pending')).not.toThrow();
    expect(() => assertStepTransition('compensation_failed', 'compensating')).not.toThrow();
  });
});
