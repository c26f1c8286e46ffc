/**
 * The contract every {@link WorkflowStore} must meet, as a vitest suite. Run it
 * from a test file of the store:
 *
 * ```ts
 * import { runWorkflowStoreContract } from 'sagaline/testing';
 * import { MemoryWorkflowStore } from 'sagaline/memory';
 *
 * runWorkflowStoreContract('memory', { create: async (clock) => new MemoryWorkflowStore({ clock }) });
 * ```
 *
 * Every case gets a fresh, empty store built around a manual clock, so due
 * times, leases and lease expiry are tested without sleeping.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createManualClock, type ManualClock } from '../core/clock.js';
import { STEP_STATUSES, type StepStatus } from '../core/step-status.js';
import { WORKFLOW_STATUSES, type WorkflowStatus } from '../core/workflow-status.js';
import type {
  ClaimedStep,
  ClaimRequest,
  ClaimToken,
  CreateWorkflowInput,
  HistoryRecord,
  NewHistoryEntry,
  NewStep,
  StepPatch,
  StepRecord,
  StoreListQuery,
  WorkflowPatch,
  WorkflowRecord,
  WorkflowStore,
  WorkflowTransaction,
} from '../storage/workflow-store.js';

/** How the contract gets a store for each case, and how it disposes of it. */
export interface StoreContractFactory {
  /** A fresh, empty store whose every time comparison uses `clock`. */
  create(clock: ManualClock): Promise<WorkflowStore>;
  /** Called after each case with the store `create` returned. */
  destroy?(store: WorkflowStore): Promise<void>;
  /**
   * Cases this store cannot support: case title -> reason. A skipped case is
   * still declared (with `it.skip`, the reason in its title), and a title that
   * names no case fails the suite.
   */
  skip?: Partial<Record<string, string>>;
}

interface CaseContext {
  store: WorkflowStore;
  clock: ManualClock;
}

/** The manual clock's start: a time with non-zero milliseconds, to catch stores that round. */
const T0 = Date.UTC(2026, 2, 14, 15, 9, 26, 535);

/**
 * Declares the store contract suite for one store implementation.
 *
 * @param name shown in the suite's title, e.g. `'memory'` or `'postgres'`.
 * @param factory builds a fresh store per case (see {@link StoreContractFactory}).
 *
 * @example
 * ```ts
 * runWorkflowStoreContract('sqlite', {
 *   create: async (clock) => new KyselyWorkflowStore({ db: await freshDatabase(), clock }),
 *   destroy: async (store) => store.close?.(),
 * });
 * ```
 */
export function runWorkflowStoreContract(name: string, factory: StoreContractFactory): void {
  const ids = createIdSource();

  describe(`WorkflowStore contract: ${name}`, () => {
    let context: CaseContext | undefined;
    const skip = factory.skip ?? {};
    const titles = new Set<string>();

    beforeEach(async () => {
      const clock = createManualClock(T0);
      context = { clock, store: await factory.create(clock) };
    });

    afterEach(async () => {
      const ended = context;
      context = undefined;
      if (ended) await factory.destroy?.(ended.store);
    });

    const test = (title: string, fn: (ctx: CaseContext) => Promise<void>): void => {
      if (titles.has(title)) throw new Error(`duplicate store contract case: ${title}`);
      titles.add(title);
      const run = async (): Promise<void> => {
        if (!context) throw new Error('the store contract has no store for this case');
        await fn(context);
      };
      const reason = skip[title];
      if (reason !== undefined) it.skip(`${title} (skipped: ${reason})`, run);
      else it(title, run);
    };

    describe('create and read', () => {
      test('createWorkflow round-trips every workflow, step and history field', async ({ store }) => {
        const id = ids.next();
        const createdAt = new Date(T0 - 60_000 + 7);
        const input = {
          plan: 'pro',
          replicas: 3,
          ratio: -0.25,
          enabled: true,
          tags: ['eu', 'primary'],
          nested: { empty: {}, list: [], nothing: null, text: 'ünïcødé ✓ "quoted" \\ back\nslash' },
        };
        const result = await store.createWorkflow({
          workflow: {
            id,
            tenantId: 'tenant-a',
            type: 'provision_service',
            serviceSlug: 'svc-db',
            status: 'pending',
            definitionVersion: 'v1:3f2a',
            input,
            idempotencyKey: 'key-1',
            createdAt,
          },
          steps: [
            { name: 'register_dns', position: 1, dependsOn: ['create_database'], maxAttempts: 4, dueAt: null },
            { name: 'create_database', position: 0, dependsOn: [], maxAttempts: 3, dueAt: new Date(T0 + 250) },
          ],
          history: [
            {
              kind: 'workflow',
              stepName: null,
              from: null,
              to: 'pending',
              actor: 'alice',
              reason: 'first start',
              action: 'start',
              detail: { source: 'api', ids: [1, 2] },
              at: new Date(T0 - 999),
            },
            { kind: 'note', stepName: 'create_database', from: null, to: null, actor: null, reason: null, action: 'scheduled', detail: 'plain text' },
          ],
        });

        const expectedWorkflow: WorkflowRecord = {
          id,
          tenantId: 'tenant-a',
          type: 'provision_service',
          serviceSlug: 'svc-db',
          status: 'pending',
          definitionVersion: 'v1:3f2a',
          input,
          output: null,
          error: null,
          idempotencyKey: 'key-1',
          currentStep: null,
          retryCount: 0,
          createdAt,
          updatedAt: createdAt,
          completedAt: null,
        };
        expect(result.created).toBe(true);
        expect(result.workflow).toEqual(expectedWorkflow);
        expect(await store.getWorkflow(id)).toEqual(expectedWorkflow);

        const blankStep = {
          workflowId: id,
          status: 'pending' as StepStatus,
          attempts: 0,
          retryCount: 0,
          startedAt: null,
          completedAt: null,
          leaseOwner: null,
          leaseToken: null,
          leaseExpiresAt: null,
          callbackTokenHash: null,
          callbackResult: null,
          pollCount: 0,
          pollDeadlineAt: null,
          output: null,
          error: null,
          completionSeq: null,
        };
        expect(await store.getSteps(id)).toEqual([
          { ...blankStep, name: 'create_database', position: 0, dependsOn: [], maxAttempts: 3, dueAt: new Date(T0 + 250) },
          { ...blankStep, name: 'register_dns', position: 1, dependsOn: ['create_database'], maxAttempts: 4, dueAt: null },
        ]);

        const history = await store.getHistory(id);
        expect(history).toHaveLength(2);
        expectIncreasingSeq(history);
        expect(history).toEqual([
          {
            seq: expect.any(Number),
            workflowId: id,
            at: new Date(T0 - 999),
            kind: 'workflow',
            stepName: null,
            from: null,
            to: 'pending',
            actor: 'alice',
            reason: 'first start',
            action: 'start',
            detail: { source: 'api', ids: [1, 2] },
          },
          {
            seq: expect.any(Number),
            workflowId: id,
            at: new Date(T0),
            kind: 'note',
            stepName: 'create_database',
            from: null,
            to: null,
            actor: null,
            reason: null,
            action: 'scheduled',
            detail: 'plain text',
          },
        ]);
      });

      test('every patchable field round-trips through a transaction', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }, { name: 'b' }] });
        clock.advance(5_000);
        const t = T0 + 5_000;
        const workflowPatch: Required<WorkflowPatch> = {
          status: 'failed',
          output: { endpoint: 'postgres://db.internal:5432/app', replicas: [1, 2, 3], flags: { ha: true } },
          error: { code: 'step_failed', message: 'create_database failed', step: 'a', detail: { http: 503, body: null } },
          currentStep: 'a',
          completedAt: new Date(t + 1),
          retryCount: 7,
        };
        const stepPatch: Required<StepPatch> = {
          status: 'failed',
          attempts: 4,
          retryCount: 3,
          startedAt: new Date(t - 111),
          completedAt: new Date(t - 7),
          dueAt: new Date(t + 30_001),
          leaseOwner: 'worker-9',
          leaseToken: uuidOf(0xe, 1),
          leaseExpiresAt: new Date(t + 45_003),
          callbackTokenHash: sha256('callback-a'),
          callbackResult: { status: 'success', endpoint: 'https://vendor.example', metadata: { region: 'eu' } },
          pollCount: 12,
          pollDeadlineAt: new Date(t + 600_009),
          output: { id: 'db-1', tags: [], score: 0.5, nothing: null },
          error: { code: 'vendor_down', message: 'vendor answered 503', detail: ['retry later'] },
          completionSeq: 5,
        };
        await store.transact(id, (tx) => {
          tx.updateWorkflow(workflowPatch);
          tx.updateStep('a', stepPatch);
          tx.updateStep('b', { status: 'completed', output: 'ok', error: { code: 'c', message: 'm' }, callbackResult: 42, completionSeq: 1 });
        });

        expect(await store.getWorkflow(id)).toEqual({
          id,
          tenantId: 'tenant-a',
          type: 'provision',
          serviceSlug: 'svc',
          definitionVersion: 'v1',
          input: { plan: 'basic' },
          idempotencyKey: null,
          createdAt: new Date(T0),
          updatedAt: new Date(t),
          ...workflowPatch,
        });

        const [a, b] = await store.getSteps(id);
        expect(a).toEqual({ workflowId: id, name: 'a', position: 0, dependsOn: [], maxAttempts: 3, ...stepPatch });
        expect(b).toMatchObject({ name: 'b', status: 'completed', output: 'ok', error: { code: 'c', message: 'm' }, callbackResult: 42, completionSeq: 1 });
        expect(b?.dueAt).toBeNull();
        expect(b?.attempts).toBe(0);
      });

      test('getSteps returns steps in definition order whatever the insert order', async ({ store }) => {
        const names = ['zeta', 'alpha', 'mu', 'beta', 'omega'];
        const id = ids.next();
        await store.createWorkflow(
          workflowInput(id, {
            steps: [3, 0, 4, 1, 2].map((position) => ({ name: must(names[position], 'name'), position, dependsOn: [], maxAttempts: 1, dueAt: null })),
          }),
        );
        const steps = await store.getSteps(id);
        expect(steps.map((s) => s.name)).toEqual(names);
        expect(steps.map((s) => s.position)).toEqual([0, 1, 2, 3, 4]);
      });

      test('history appended over time keeps increasing seq and the store time', async ({ store, clock }) => {
        const id = await seed(store, ids, { history: [note('created')] });
        clock.advance(1_000);
        await store.transact(id, (tx) => tx.appendHistory([note('one'), note('two')]));
        clock.advance(1_000);
        await store.transact(id, (tx) => tx.appendHistory([{ ...note('three'), at: new Date(T0 + 1_500) }]));
        const history = await store.getHistory(id);
        expectIncreasingSeq(history);
        expect(history.map((h) => [h.action, h.at.getTime()])).toEqual([
          ['created', T0],
          ['one', T0 + 1_000],
          ['two', T0 + 1_000],
          ['three', T0 + 1_500],
        ]);
        expect(history.every((h) => h.workflowId === id)).toBe(true);
      });

      test('an idempotency key is unique per tenant', async ({ store }) => {
        const first = ids.next();
        const created = await store.createWorkflow(workflowInput(first, { tenantId: 'tenant-a', idempotencyKey: 'same-key', input: { n: 1 } }));
        expect(created.created).toBe(true);

        const repeatId = ids.next();
        const repeat = await store.createWorkflow(
          workflowInput(repeatId, { tenantId: 'tenant-a', idempotencyKey: 'same-key', input: { n: 2 }, history: [note('again')] }),
        );
        expect(repeat.created).toBe(false);
        expect(repeat.workflow).toEqual(created.workflow);
        expect(repeat.workflow.input).toEqual({ n: 1 });
        expect(await store.getWorkflow(repeatId)).toBeNull();
        expect(await store.getSteps(repeatId)).toEqual([]);
        expect(await store.getHistory(repeatId)).toEqual([]);
        expect((await store.getHistory(first)).map((h) => h.action)).not.toContain('again');

        const otherTenantId = ids.next();
        const otherTenant = await store.createWorkflow(workflowInput(otherTenantId, { tenantId: 'tenant-b', idempotencyKey: 'same-key' }));
        expect(otherTenant.created).toBe(true);
        expect(otherTenant.workflow.id).toBe(otherTenantId);
        expect(otherTenant.workflow.tenantId).toBe('tenant-b');
        expect(await store.getSteps(otherTenantId)).toHaveLength(1);
      });

      test('workflows without an idempotency key are never deduplicated', async ({ store }) => {
        const a = await store.createWorkflow(workflowInput(ids.next(), { tenantId: 'tenant-a', idempotencyKey: null }));
        const b = await store.createWorkflow(workflowInput(ids.next(), { tenantId: 'tenant-a', idempotencyKey: null }));
        expect(a.created).toBe(true);
        expect(b.created).toBe(true);
        expect(a.workflow.id).not.toBe(b.workflow.id);
        expect(await store.listWorkflows({ tenantId: 'tenant-a', limit: 10 })).toHaveLength(2);
      });

      test('unknown ids read as absent', async ({ store }) => {
        await seed(store, ids, {});
        const unknown = ids.next();
        expect(await store.getWorkflow(unknown)).toBeNull();
        expect(await store.getSteps(unknown)).toEqual([]);
        expect(await store.getHistory(unknown)).toEqual([]);
        expect(await store.extendLease(unknown, 'a', uuidOf(0xe, 99), 1_000)).toBe(false);
      });

      test('now() reads the injected clock', async ({ store, clock }) => {
        expect(await store.now()).toEqual(new Date(T0));
        clock.advance(1_234);
        expect(await store.now()).toEqual(new Date(T0 + 1_234));
      });
    });

    describe('claims', () => {
      test('claims only steps whose dueAt has arrived', async ({ store, clock }) => {
        const id = await seed(store, ids, {
          steps: [
            { name: 'past', dueAt: new Date(T0 - 1) },
            { name: 'now', dueAt: new Date(T0) },
            { name: 'future', dueAt: new Date(T0 + 1) },
            { name: 'never', dueAt: null },
          ],
        });
        expect(keys(await store.claimSteps(claimRequest('w1', 10)))).toEqual(new Set([`${id}/past`, `${id}/now`]));
        expect(await store.claimSteps(claimRequest('w1', 10))).toEqual([]);
        clock.advance(1);
        expect(keys(await store.claimSteps(claimRequest('w1', 10)))).toEqual(new Set([`${id}/future`]));
        const never = await stepOf(store, id, 'never');
        expect(never.status).toBe('pending');
        expect(never.leaseOwner).toBeNull();
        expect(never.attempts).toBe(0);
      });

      test('a step created claimed runs under its lease and is claimable only once the lease expires', async ({ store, clock }) => {
        const id = ids.next();
        const input = workflowInput(id, { status: 'running', steps: [{ name: 'a', dueAt: new Date(T0) }, { name: 'b', dependsOn: ['a'] }] });
        const claim = { workerId: 'starter', leaseToken: 'lease-created', leaseExpiresAt: new Date(T0 + 1_000), callbackTokenHash: 'hash-created' };
        input.steps[0]!.claim = claim;
        expect((await store.createWorkflow(input)).created).toBe(true);
        expect(await stepOf(store, id, 'a')).toMatchObject({
          status: 'running',
          attempts: 1,
          startedAt: new Date(T0),
          dueAt: new Date(T0),
          leaseOwner: 'starter',
          leaseToken: 'lease-created',
          leaseExpiresAt: new Date(T0 + 1_000),
          callbackTokenHash: 'hash-created',
        });
        expect(await stepOf(store, id, 'b')).toMatchObject({ status: 'pending', attempts: 0, leaseToken: null, dueAt: null });
        clock.advance(999);
        expect(await store.claimSteps(claimRequest('w1', 10))).toEqual([]);
        clock.advance(1);
        const [reclaimed] = await store.claimSteps(claimRequest('w1', 10));
        expect(reclaimed).toMatchObject({ stepName: 'a', previousStatus: 'running' });
        expect(await stepOf(store, id, 'a')).toMatchObject({ status: 'running', attempts: 2, leaseOwner: 'w1' });
      });

      test('createWorkflow refuses an initial claim without its lease fields', async ({ store }) => {
        const id = ids.next();
        const input = workflowInput(id, { steps: [{ name: 'a', dueAt: new Date(T0) }] });
        input.steps[0]!.claim = { workerId: 'starter', leaseToken: '', leaseExpiresAt: new Date(T0), callbackTokenHash: 'h' };
        await expect(store.createWorkflow(input)).rejects.toThrow(/leaseToken/);
        input.steps[0]!.claim = { workerId: 'starter', leaseToken: 't', leaseExpiresAt: new Date(Number.NaN), callbackTokenHash: 'h' };
        await expect(store.createWorkflow(input)).rejects.toThrow(/leaseExpiresAt/);
        expect(await store.getWorkflow(id)).toBeNull();
      });

      test('claims only steps whose lease is free', async ({ store, clock }) => {
        const id = await seed(store, ids, {
          status: 'running',
          steps: [
            { name: 'held', dueAt: new Date(T0 - 10) },
            { name: 'expired', dueAt: new Date(T0 - 10) },
            { name: 'free', dueAt: new Date(T0 - 10) },
          ],
        });
        const heldToken = uuidOf(0xe, 1);
        await store.transact(id, (tx) => {
          tx.updateStep('held', { status: 'running', attempts: 1, leaseOwner: 'other', leaseToken: heldToken, leaseExpiresAt: new Date(T0 + 1) });
          tx.updateStep('expired', { status: 'running', attempts: 1, leaseOwner: 'other', leaseToken: uuidOf(0xe, 2), leaseExpiresAt: new Date(T0) });
        });
        expect(keys(await store.claimSteps(claimRequest('w1', 10)))).toEqual(new Set([`${id}/expired`, `${id}/free`]));
        const held = await stepOf(store, id, 'held');
        expect(held).toMatchObject({ leaseOwner: 'other', leaseToken: heldToken, leaseExpiresAt: new Date(T0 + 1), attempts: 1 });
        clock.advance(1);
        expect(keys(await store.claimSteps(claimRequest('w2', 10)))).toEqual(new Set([`${id}/held`]));
      });

      test('claims only steps in a claimable status', async ({ store }) => {
        const id = await seed(store, ids, {
          status: 'running',
          steps: STEP_STATUSES.map((status) => ({ name: status, dueAt: new Date(T0 - 5) })),
        });
        await store.transact(id, (tx) => {
          for (const status of STEP_STATUSES) tx.updateStep(status, { status });
        });
        const claimed = await store.claimSteps(claimRequest('w1', 20));
        expect(new Set(claimed.map((c) => c.stepName))).toEqual(new Set(['pending', 'running', 'waiting_callback', 'waiting_poll', 'compensating']));
        for (const step of await store.getSteps(id)) {
          const claimable = ['pending', 'running', 'waiting_callback', 'waiting_poll', 'compensating'].includes(step.name);
          expect(step.leaseOwner, step.name).toBe(claimable ? 'w1' : null);
          if (!claimable) expect(step.status, step.name).toBe(step.name);
        }
      });

      test('claims only steps of pending, running or rolling_back workflows', async ({ store }) => {
        const byStatus = new Map<string, WorkflowStatus>();
        for (const status of WORKFLOW_STATUSES) {
          byStatus.set(await seed(store, ids, { status, steps: [{ name: 'a', dueAt: new Date(T0 - 1) }] }), status);
        }
        const claimed = await store.claimSteps(claimRequest('w1', 20));
        expect(new Set(claimed.map((c) => byStatus.get(c.workflow.id)))).toEqual(new Set(['pending', 'running', 'rolling_back']));
        expect(claimed).toHaveLength(3);
        for (const [id, status] of byStatus) {
          if (status === 'pending' || status === 'running' || status === 'rolling_back') continue;
          const step = await stepOf(store, id, 'a');
          expect(step.status, status).toBe('pending');
          expect(step.leaseOwner, status).toBeNull();
          expect(must(await store.getWorkflow(id), id).status).toBe(status);
        }
      });

      test('claiming a pending step starts the step and its pending workflow', async ({ store, clock }) => {
        const id = await seed(store, ids, {
          createdAt: new Date(T0 - 10_000),
          steps: [{ name: 'a', dueAt: new Date(T0 - 5) }, { name: 'b' }],
        });
        // A leftover from an earlier attempt must not leak into the new one.
        await store.transact(id, (tx) => tx.updateStep('a', { callbackResult: { status: 'success' } }));
        const before = await store.getHistory(id);
        clock.advance(250);
        const now = new Date(T0 + 250);
        const request = claimRequest('worker-1', 5, 30_000);
        const claimed = await store.claimSteps(request);
        expect(claimed).toHaveLength(1);
        const c = must(claimed[0], 'claim');
        const token = must(request.tokens[0], 'token');
        expect(c.stepName).toBe('a');
        expect(c.previousStatus).toBe('pending');
        expect(c.now).toEqual(now);
        expect(c.workflow).toMatchObject({ id, status: 'running', updatedAt: now, retryCount: 0 });
        expect(c.steps.map((s) => s.name)).toEqual(['a', 'b']);
        expect(c.steps[0]).toMatchObject({
          status: 'running',
          attempts: 1,
          retryCount: 0,
          startedAt: now,
          dueAt: new Date(T0 - 5),
          leaseOwner: 'worker-1',
          leaseToken: token.leaseToken,
          leaseExpiresAt: new Date(T0 + 250 + 30_000),
          callbackTokenHash: token.callbackTokenHash,
          callbackResult: null,
        });
        expect(c.steps[1]).toMatchObject({ status: 'pending', leaseOwner: null, attempts: 0 });
        expect(await store.getWorkflow(id)).toEqual(c.workflow);
        expect(await store.getSteps(id)).toEqual(c.steps);

        const history = await store.getHistory(id);
        expectIncreasingSeq(history);
        const added = history.slice(before.length);
        expect(added).toHaveLength(2);
        expect(added).toEqual(
          expect.arrayContaining([
            expect.objectContaining({ kind: 'workflow', stepName: null, from: 'pending', to: 'running', at: now, workflowId: id }),
            expect.objectContaining({ kind: 'step', stepName: 'a', from: 'pending', to: 'running', at: now, workflowId: id }),
          ]),
        );
      });

      test('claiming a pending step of a running workflow writes only the step transition', async ({ store, clock }) => {
        const id = await seed(store, ids, { status: 'running', steps: [{ name: 'a', dueAt: new Date(T0) }] });
        const before = await store.getHistory(id);
        clock.advance(10);
        const [c] = await store.claimSteps(claimRequest('w1', 1));
        expect(c?.workflow).toMatchObject({ status: 'running', updatedAt: new Date(T0 + 10) });
        const added = (await store.getHistory(id)).slice(before.length);
        expect(added).toEqual([expect.objectContaining({ kind: 'step', stepName: 'a', from: 'pending', to: 'running', at: new Date(T0 + 10) })]);
      });

      test('a running step whose lease expired is reclaimed with a lease_reclaimed note', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }] });
        const first = claimRequest('w1', 1, 1_000);
        const firstToken = must(first.tokens[0], 'token');
        expect(await store.claimSteps(first)).toHaveLength(1);
        await store.transact(id, (tx) => tx.updateStep('a', { callbackResult: { status: 'failed' } }, { expectLeaseToken: firstToken.leaseToken }));

        clock.advance(999);
        expect(await store.claimSteps(claimRequest('w2', 1, 1_000))).toEqual([]);
        const before = await store.getHistory(id);
        clock.advance(1);
        const now = new Date(T0 + 1_000);
        const second = claimRequest('w2', 1, 1_000);
        const secondToken = must(second.tokens[0], 'token');
        const [c] = await store.claimSteps(second);
        expect(c?.stepName).toBe('a');
        expect(c?.previousStatus).toBe('running');
        expect(c?.now).toEqual(now);
        expect(c?.workflow).toMatchObject({ status: 'running', retryCount: 1, updatedAt: now });
        const step = await stepOf(store, id, 'a');
        expect(step).toMatchObject({
          status: 'running',
          attempts: 2,
          retryCount: 1,
          startedAt: now,
          dueAt: new Date(T0),
          leaseOwner: 'w2',
          leaseToken: secondToken.leaseToken,
          leaseExpiresAt: new Date(T0 + 2_000),
          callbackTokenHash: secondToken.callbackTokenHash,
          // A callback accepted while the lost attempt ran is kept for the new one.
          callbackResult: { status: 'failed' },
        });
        expect(c?.steps).toEqual([step]);
        expect(must(await store.getWorkflow(id), id).retryCount).toBe(1);

        const added = (await store.getHistory(id)).slice(before.length);
        expect(added).toEqual([expect.objectContaining({ kind: 'note', stepName: 'a', action: 'lease_reclaimed', at: now })]);
      });

      test('claiming waiting and compensating steps renews the lease and keeps the attempt', async ({ store, clock }) => {
        const running = await seed(store, ids, {
          status: 'running',
          steps: [
            { name: 'callback', dueAt: new Date(T0 + 60_000) },
            { name: 'poll', dueAt: new Date(T0 + 5_000) },
          ],
        });
        const rollingBack = await seed(store, ids, { status: 'rolling_back', steps: [{ name: 'undo', dueAt: new Date(T0 + 1_000) }] });
        const callbackHash = sha256('waiting-callback');
        const startedAt = new Date(T0 - 3_000);
        await store.transact(running, (tx) => {
          tx.updateStep('callback', { status: 'waiting_callback', attempts: 1, startedAt, callbackTokenHash: callbackHash, callbackResult: null });
          tx.updateStep('poll', { status: 'waiting_poll', attempts: 1, startedAt, pollCount: 3, pollDeadlineAt: new Date(T0 + 600_000) });
        });
        await store.transact(rollingBack, (tx) => tx.updateStep('undo', { status: 'compensating', attempts: 2, startedAt }));
        const historyBefore = [(await store.getHistory(running)).length, (await store.getHistory(rollingBack)).length];

        clock.advance(60_000);
        const now = T0 + 60_000;
        const claimed = await store.claimSteps(claimRequest('w1', 10, 5_000));
        expect(new Map(claimed.map((c) => [c.stepName, c.previousStatus]))).toEqual(
          new Map<string, StepStatus>([
            ['undo', 'compensating'],
            ['poll', 'waiting_poll'],
            ['callback', 'waiting_callback'],
          ]),
        );
        const lease = { leaseOwner: 'w1', leaseExpiresAt: new Date(now + 5_000) };
        expect(await stepOf(store, running, 'callback')).toMatchObject({
          ...lease,
          status: 'waiting_callback',
          attempts: 1,
          retryCount: 0,
          startedAt,
          callbackTokenHash: callbackHash,
        });
        expect(await stepOf(store, running, 'poll')).toMatchObject({ ...lease, status: 'waiting_poll', attempts: 1, startedAt, pollCount: 3 });
        expect(await stepOf(store, rollingBack, 'undo')).toMatchObject({ ...lease, status: 'compensating', attempts: 3, retryCount: 0, startedAt });
        expect([(await store.getHistory(running)).length, (await store.getHistory(rollingBack)).length]).toEqual(historyBefore);
        expect(must(await store.getWorkflow(rollingBack), rollingBack).status).toBe('rolling_back');
      });

      test('claims honour the limit, take the earliest dueAt first and hand out tokens in order', async ({ store }) => {
        const offsets = [3_000, 1_000, 5_000, 2_000, 4_000];
        const byOffset = new Map<number, string>();
        for (const offset of offsets) byOffset.set(offset, await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0 - offset) }] }));

        const first = claimRequest('w1', 2);
        const claimed = await store.claimSteps(first);
        expect(claimed.map((c) => c.workflow.id)).toEqual([byOffset.get(5_000), byOffset.get(4_000)]);
        for (const [i, c] of claimed.entries()) {
          const step = must(c.steps.find((s) => s.name === c.stepName), c.stepName);
          expect(step.leaseToken).toBe(first.tokens[i]?.leaseToken);
          expect(step.callbackTokenHash).toBe(first.tokens[i]?.callbackTokenHash);
        }

        const rest = await store.claimSteps(claimRequest('w1', 10));
        expect(rest.map((c) => c.workflow.id)).toEqual([byOffset.get(3_000), byOffset.get(2_000), byOffset.get(1_000)]);
        expect(await store.claimSteps(claimRequest('w1', 10))).toEqual([]);
      });

      test('concurrent claims never hand the same step to two claimers', async ({ store }) => {
        const all = new Set<string>();
        for (let w = 0; w < 12; w++) {
          const id = await seed(store, ids, {
            steps: ['a', 'b', 'c'].map((name) => ({ name, dueAt: new Date(T0 - w) })),
          });
          for (const name of ['a', 'b', 'c']) all.add(`${id}/${name}`);
        }
        const requests = ['w1', 'w2', 'w3', 'w4'].map((worker) => claimRequest(worker, 12));
        const results = await Promise.all(requests.map((r) => store.claimSteps(r)));
        const seen = new Map<string, string>();
        for (const [i, result] of results.entries()) {
          const request = must(requests[i], 'request');
          const handed = new Set(request.tokens.map((t) => t.leaseToken));
          for (const c of result) {
            const key = `${c.workflow.id}/${c.stepName}`;
            expect(seen.has(key), `${key} claimed by ${seen.get(key)} and ${request.workerId}`).toBe(false);
            seen.set(key, request.workerId);
            const stored = await stepOf(store, c.workflow.id, c.stepName);
            expect(stored.leaseOwner).toBe(request.workerId);
            expect(handed.has(must(stored.leaseToken, 'leaseToken'))).toBe(true);
            expect(stored.attempts).toBe(1);
          }
        }
        for (const c of await store.claimSteps(claimRequest('sweeper', 100))) {
          const key = `${c.workflow.id}/${c.stepName}`;
          expect(seen.has(key), `${key} claimed twice`).toBe(false);
          seen.set(key, 'sweeper');
        }
        expect(new Set(seen.keys())).toEqual(all);
      });

      test('claims do not take a step while a transaction holds its workflow', async ({ store, clock }) => {
        const locked = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0 - 2) }] });
        const free = await seed(store, ids, { steps: [{ name: 'b', dueAt: new Date(T0 - 1) }] });
        const entered = deferred();
        const gate = deferred();
        const transaction = store.transact(locked, async (tx) => {
          entered.resolve();
          await gate.promise;
          tx.updateStep('a', { dueAt: new Date(T0 + 60_000) });
        });
        await entered.promise;
        // A store may skip the locked workflow or wait for the lock; either way
        // the claim must not hand out `a` under the old state.
        const claim = store.claimSteps(claimRequest('w1', 10, 600_000));
        await settledOrIdle(claim);
        gate.resolve();
        await transaction;
        expect(keys(await claim)).toEqual(new Set([`${free}/b`]));
        const a = await stepOf(store, locked, 'a');
        expect(a).toMatchObject({ status: 'pending', leaseOwner: null, attempts: 0, dueAt: new Date(T0 + 60_000) });

        clock.advance(60_000);
        expect(keys(await store.claimSteps(claimRequest('w1', 10)))).toEqual(new Set([`${locked}/a`]));
      });
    });

    describe('transactions', () => {
      test('the transaction snapshot is the committed state at the store time', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'second', position: 1 }, { name: 'first', position: 0, dueAt: new Date(T0) }] });
        clock.advance(42);
        const workflow = await store.getWorkflow(id);
        const steps = await store.getSteps(id);
        const seenInside = await store.transact(id, (tx) => ({ now: tx.now, workflow: tx.workflow, steps: [...tx.steps] }));
        expect(seenInside.now).toEqual(new Date(T0 + 42));
        expect(seenInside.workflow).toEqual(workflow);
        expect(seenInside.steps).toEqual(steps);
        expect(seenInside.steps.map((s) => s.name)).toEqual(['first', 'second']);
      });

      test('transact applies buffered writes in order and returns the callback result', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }, { name: 'b' }], history: [note('created')] });
        clock.advance(700);
        const now = new Date(T0 + 700);
        const result = await store.transact(id, async (tx) => {
          tx.updateStep('a', { status: 'running', attempts: 1, output: { first: true } });
          tx.updateWorkflow({ status: 'running', currentStep: 'a' });
          tx.appendHistory([note('one')]);
          await Promise.resolve();
          tx.updateStep('a', { attempts: 2, output: { second: true } });
          tx.updateStep('b', { dueAt: now });
          tx.updateWorkflow({ currentStep: 'b' });
          tx.appendHistory([note('two'), note('three')]);
          return { answer: 'done' };
        });
        expect(result).toEqual({ answer: 'done' });
        expect(await store.getWorkflow(id)).toMatchObject({ status: 'running', currentStep: 'b', updatedAt: now });
        const [a, b] = await store.getSteps(id);
        expect(a).toMatchObject({ status: 'running', attempts: 2, output: { second: true } });
        expect(b).toMatchObject({ status: 'pending', dueAt: now });
        const history = await store.getHistory(id);
        expectIncreasingSeq(history);
        expect(history.map((h) => [h.action, h.at.getTime()])).toEqual([
          ['created', T0],
          ['one', T0 + 700],
          ['two', T0 + 700],
          ['three', T0 + 700],
        ]);
      });

      test('every transaction write sets the workflow updatedAt to the store time', async ({ store, clock }) => {
        const id = await seed(store, ids, { createdAt: new Date(T0 - 5_000), steps: [{ name: 'a' }] });
        clock.advance(1_000);
        await store.transact(id, (tx) => tx.updateStep('a', { dueAt: new Date(T0) }));
        expect(must(await store.getWorkflow(id), id).updatedAt).toEqual(new Date(T0 + 1_000));
        clock.advance(1_000);
        await store.transact(id, (tx) => tx.appendHistory([note('only history')]));
        expect(must(await store.getWorkflow(id), id).updatedAt).toEqual(new Date(T0 + 2_000));
        clock.advance(1_000);
        await store.transact(id, (tx) => tx.updateWorkflow({ currentStep: 'a' }));
        expect(must(await store.getWorkflow(id), id).updatedAt).toEqual(new Date(T0 + 3_000));
      });

      test('a throwing callback writes nothing and releases the lock', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }], history: [note('created')] });
        clock.advance(100);
        const before = await snapshot(store, id);
        const boom = new Error('boom');
        await expect(
          store.transact(id, async (tx) => {
            tx.updateWorkflow({ status: 'failed', currentStep: 'a' });
            tx.updateStep('a', { status: 'failed', dueAt: null, error: { code: 'x', message: 'y' } });
            tx.appendHistory([note('never')]);
            await Promise.resolve();
            throw boom;
          }),
        ).rejects.toBe(boom);
        expect(await snapshot(store, id)).toEqual(before);

        const syncBoom = new Error('sync boom');
        await expect(
          store.transact(id, (tx) => {
            tx.updateStep('a', { status: 'skipped' });
            throw syncBoom;
          }),
        ).rejects.toBe(syncBoom);
        expect(await snapshot(store, id)).toEqual(before);

        // The lock was released: the step is claimable and the workflow writable.
        expect(keys(await store.claimSteps(claimRequest('w1', 1)))).toEqual(new Set([`${id}/a`]));
        await store.transact(id, (tx) => tx.updateWorkflow({ currentStep: 'a' }));
        expect(must(await store.getWorkflow(id), id).currentStep).toBe('a');
      });

      test('a fenced update with a stale lease token throws stale_lease and writes nothing', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }, { name: 'b' }] });
        const first = claimRequest('w1', 1, 1_000);
        const lost = must(first.tokens[0], 'token').leaseToken;
        await store.claimSteps(first);
        clock.advance(1_000);
        const second = claimRequest('w2', 1, 1_000);
        const current = must(second.tokens[0], 'token').leaseToken;
        expect(await store.claimSteps(second)).toHaveLength(1);
        clock.advance(10);

        const before = await snapshot(store, id);
        let caught: unknown;
        try {
          await store.transact(id, (tx) => {
            tx.updateWorkflow({ currentStep: 'a', output: { late: true } });
            tx.updateStep('b', { dueAt: tx.now });
            tx.appendHistory([note('late result')]);
            tx.updateStep('a', { status: 'completed', output: 'late', leaseToken: null }, { expectLeaseToken: lost });
            tx.updateStep('b', { status: 'skipped' });
          });
        } catch (err) {
          caught = err;
        }
        expect(caught).toBeInstanceOf(Error);
        expect((caught as { code?: unknown }).code).toBe('stale_lease');
        expect(await snapshot(store, id)).toEqual(before);

        await store.transact(id, (tx) =>
          tx.updateStep('a', { status: 'completed', output: 'fresh', leaseToken: null, leaseOwner: null, leaseExpiresAt: null }, { expectLeaseToken: current }),
        );
        expect(await stepOf(store, id, 'a')).toMatchObject({ status: 'completed', output: 'fresh', leaseToken: null });
      });

      test('a fenced update with the current lease token is applied', async ({ store }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }, { name: 'b' }] });
        const request = claimRequest('w1', 1);
        await store.claimSteps(request);
        const leaseToken = must(request.tokens[0], 'token').leaseToken;

        await store.transact(id, (tx) => {
          tx.updateStep('a', { status: 'completed', output: { ok: 1 }, leaseOwner: null, leaseToken: null, leaseExpiresAt: null, dueAt: null }, { expectLeaseToken: leaseToken });
          // `null` fences on "no lease": `b` has none.
          tx.updateStep('b', { dueAt: tx.now }, { expectLeaseToken: null });
        });
        expect(await stepOf(store, id, 'a')).toMatchObject({ status: 'completed', output: { ok: 1 }, leaseToken: null, dueAt: null });
        expect(await stepOf(store, id, 'b')).toMatchObject({ dueAt: new Date(T0) });

        await store.claimSteps(claimRequest('w1', 1));
        const before = await snapshot(store, id);
        await expect(store.transact(id, (tx) => tx.updateStep('b', { status: 'skipped' }, { expectLeaseToken: null }))).rejects.toMatchObject({
          code: 'stale_lease',
        });
        expect(await snapshot(store, id)).toEqual(before);
      });

      test('fences are checked against the earlier writes of the same transaction', async ({ store }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }] });
        const request = claimRequest('w1', 1);
        await store.claimSteps(request);
        const leaseToken = must(request.tokens[0], 'token').leaseToken;
        const before = await snapshot(store, id);

        await expect(
          store.transact(id, (tx) => {
            tx.updateStep('a', { leaseToken: null, leaseOwner: null, leaseExpiresAt: null });
            tx.updateStep('a', { status: 'completed' }, { expectLeaseToken: leaseToken });
          }),
        ).rejects.toMatchObject({ code: 'stale_lease' });
        expect(await snapshot(store, id)).toEqual(before);

        await store.transact(id, (tx) => {
          tx.updateStep('a', { status: 'completed' }, { expectLeaseToken: leaseToken });
          tx.updateStep('a', { leaseToken: null, leaseOwner: null, leaseExpiresAt: null });
          tx.updateStep('a', { dueAt: null }, { expectLeaseToken: null });
        });
        expect(await stepOf(store, id, 'a')).toMatchObject({ status: 'completed', leaseToken: null, dueAt: null });
      });

      test('transactions on one workflow are serialized', async ({ store }) => {
        const id = await seed(store, ids, {});
        const events: string[] = [];
        const entered = deferred();
        const gate = deferred();
        const first = store.transact(id, async (tx) => {
          events.push('first:start');
          entered.resolve();
          await gate.promise;
          tx.updateWorkflow({ currentStep: 'first' });
          events.push('first:end');
        });
        await entered.promise;
        const second = store.transact(id, (tx) => {
          events.push(`second:start:${String(tx.workflow.currentStep)}`);
          tx.updateWorkflow({ currentStep: 'second' });
        });
        await settledOrIdle(second);
        gate.resolve();
        await Promise.all([first, second]);
        expect(events).toEqual(['first:start', 'first:end', 'second:start:first']);
        expect(must(await store.getWorkflow(id), id).currentStep).toBe('second');
      });

      test('optimistic transactions lose no update to a concurrent writer', async ({ store }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }] });
        const entered = deferred();
        const gate = deferred();
        const seenByFirst: number[] = [];
        // A read-modify-write that waits between its read and its write.
        const first = store.transact(
          id,
          async (tx) => {
            const attempts = must(tx.steps[0], 'step').attempts;
            seenByFirst.push(attempts);
            entered.resolve();
            await gate.promise;
            tx.updateStep('a', { attempts: attempts + 1 });
            tx.appendHistory([note('first')]);
          },
          { optimistic: true },
        );
        await entered.promise;
        const second = store.transact(id, (tx) => {
          tx.updateStep('a', { attempts: must(tx.steps[0], 'step').attempts + 10 });
          tx.appendHistory([note('second')]);
        });
        // A store that holds the lock makes the second wait; an optimistic one lets it commit first.
        await settledOrIdle(second);
        gate.resolve();
        await Promise.all([first, second]);
        expect((await stepOf(store, id, 'a')).attempts).toBe(11);
        const notes = (await store.getHistory(id)).map((h) => h.action);
        expect(notes.filter((a) => a === 'first')).toHaveLength(1);
        expect(notes.filter((a) => a === 'second')).toHaveLength(1);
        // Each run of the first callback saw a committed state: before the second write, or after it.
        expect(seenByFirst.every((n) => n === 0 || n === 10)).toBe(true);
      });

      test('an optimistic transaction sees writes made after its previous one', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }] });
        const bump = (by: number, optimistic: boolean) =>
          store.transact(
            id,
            (tx) => {
              const a = must(tx.steps[0], 'step');
              tx.updateStep('a', { attempts: a.attempts + by, output: { seen: a.attempts } });
              return a.attempts;
            },
            { optimistic },
          );
        expect(await bump(1, true)).toBe(0);
        clock.advance(5);
        expect(await bump(1, true)).toBe(1);
        // A write by another path (a plain transaction, then a claim) in between.
        expect(await bump(100, false)).toBe(2);
        clock.advance(5);
        expect(await bump(1, true)).toBe(102);
        await store.claimSteps(claimRequest('w1', 1));
        const claimed = await stepOf(store, id, 'a');
        expect(claimed.attempts).toBe(104);
        expect(await bump(1, true)).toBe(104);
        expect(await stepOf(store, id, 'a')).toMatchObject({ attempts: 105, output: { seen: 104 }, leaseOwner: 'w1', status: 'running' });
        expect(must(await store.getWorkflow(id), id).updatedAt).toEqual(new Date(T0 + 10));
      });

      test('what an optimistic callback does to its snapshot does not leak into the next one', async ({ store }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }] });
        await store.transact(id, (tx) => tx.updateStep('a', { output: { list: [1] } }), { optimistic: true });
        await store.transact(
          id,
          (tx) => {
            // Callbacks hand outputs on (as step dependencies); a receiver that changes them changes only its copy.
            (must(tx.steps[0], 'step').output as { list: number[] }).list.push(2);
            tx.updateWorkflow({ currentStep: 'a' });
          },
          { optimistic: true },
        );
        const seen = await store.transact(id, (tx) => must(tx.steps[0], 'step').output, { optimistic: true });
        expect(seen).toEqual({ list: [1] });
        expect((await stepOf(store, id, 'a')).output).toEqual({ list: [1] });
      });

      test('the records a callback is handed are its own: only its update calls write', async ({ store }) => {
        // Everything a record holds, changed to something else.
        const scramble = (record: Record<string, unknown>): void => {
          for (const key of Object.keys(record)) {
            const value = record[key];
            record[key] =
              value instanceof Date ? new Date(0) : typeof value === 'number' ? value + 1000 : typeof value === 'string' ? `${value}-changed` : { changed: true };
          }
        };
        for (const optimistic of [false, true]) {
          const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }, { name: 'b' }] });
          const request = claimRequest('w1', 1);
          await store.claimSteps(request);
          const leaseToken = must(request.tokens[0], 'token').leaseToken;
          const before = await snapshot(store, id);
          const scrambleAll = (tx: WorkflowTransaction): void => {
            scramble(tx.workflow as unknown as Record<string, unknown>);
            for (const s of tx.steps) scramble(s as unknown as Record<string, unknown>);
          };

          await store.transact(id, scrambleAll, { optimistic });
          expect(await snapshot(store, id)).toEqual(before);

          await store.transact(
            id,
            (tx) => {
              scrambleAll(tx);
              // Fenced against the lease token the store holds, not the one the callback wrote into its record.
              tx.updateStep('a', { status: 'completed', output: { done: true } }, { expectLeaseToken: leaseToken });
              scrambleAll(tx);
              tx.updateStep('a', { leaseToken: null, leaseOwner: null, leaseExpiresAt: null }, { expectLeaseToken: leaseToken });
              tx.updateWorkflow({ currentStep: 'b' });
              scrambleAll(tx);
            },
            { optimistic },
          );
          const after = await snapshot(store, id);
          const [a, b] = after.steps;
          expect(a).toEqual({ ...before.steps[0], status: 'completed', output: { done: true }, leaseToken: null, leaseOwner: null, leaseExpiresAt: null });
          expect(b).toEqual(before.steps[1]);
          const workflow = must(after.workflow, 'workflow');
          expect(workflow).toEqual({ ...before.workflow, currentStep: 'b', updatedAt: workflow.updatedAt });
          expect(after.history).toEqual(before.history);
          // And the next callback is handed the stored state, not what the last one did to its records.
          const seen = await store.transact(id, (tx) => ({ workflow: { ...tx.workflow }, steps: tx.steps.map((s) => ({ ...s })) }), { optimistic });
          expect(seen).toEqual({ workflow: after.workflow, steps: after.steps });
        }
      });

      test('transact on an unknown workflow throws not_found', async ({ store }) => {
        await seed(store, ids, {});
        let called = false;
        await expect(
          store.transact(ids.next(), () => {
            called = true;
          }),
        ).rejects.toMatchObject({ code: 'not_found' });
        expect(called).toBe(false);
      });
    });

    describe('leases and callbacks', () => {
      test('extendLease renews a current lease from the store clock', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }] });
        const request = claimRequest('w1', 1, 1_000);
        await store.claimSteps(request);
        const leaseToken = must(request.tokens[0], 'token').leaseToken;

        clock.advance(600);
        expect(await store.extendLease(id, 'a', leaseToken, 1_000)).toBe(true);
        expect(await stepOf(store, id, 'a')).toMatchObject({ leaseOwner: 'w1', leaseToken, leaseExpiresAt: new Date(T0 + 1_600) });

        clock.advance(600); // past the original expiry, before the renewed one
        expect(await store.claimSteps(claimRequest('w2', 1))).toEqual([]);
        clock.advance(400);
        expect(keys(await store.claimSteps(claimRequest('w2', 1)))).toEqual(new Set([`${id}/a`]));
      });

      test('extendLease refuses a lost lease', async ({ store, clock }) => {
        const id = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }, { name: 'b', dueAt: new Date(T0) }] });
        const first = claimRequest('w1', 2, 1_000);
        await store.claimSteps(first);
        const [tokenA, tokenB] = first.tokens.map((t) => t.leaseToken);
        clock.advance(1_000);
        const second = claimRequest('w2', 1, 5_000);
        expect(await store.claimSteps(second)).toHaveLength(1);
        const reclaimed = must((await store.getSteps(id)).find((s) => s.leaseOwner === 'w2'), 'reclaimed step');
        const lostToken = reclaimed.name === 'a' ? must(tokenA, 'a') : must(tokenB, 'b');

        clock.advance(100);
        expect(await store.extendLease(id, reclaimed.name, lostToken, 60_000)).toBe(false);
        expect(await stepOf(store, id, reclaimed.name)).toMatchObject({
          leaseOwner: 'w2',
          leaseToken: second.tokens[0]?.leaseToken,
          leaseExpiresAt: new Date(T0 + 6_000),
        });
        expect(await store.extendLease(id, 'missing-step', lostToken, 60_000)).toBe(false);

        const other = reclaimed.name === 'a' ? 'b' : 'a';
        const otherToken = other === 'a' ? must(tokenA, 'a') : must(tokenB, 'b');
        await store.transact(id, (tx) => tx.updateStep(other, { status: 'completed', leaseOwner: null, leaseToken: null, leaseExpiresAt: null }));
        expect(await store.extendLease(id, other, otherToken, 60_000)).toBe(false);
        expect(await stepOf(store, id, other)).toMatchObject({ leaseToken: null, leaseExpiresAt: null });
      });

      test('a claim stores each step its own callback hash; a read returns it as cleared or replaced', async ({ store }) => {
        const w1 = await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0) }] });
        const w2 = await seed(store, ids, { steps: [{ name: 'b', dueAt: new Date(T0) }] });
        const request = claimRequest('w1', 2);
        const claimed = await store.claimSteps(request);
        expect(claimed).toHaveLength(2);
        const hashes = new Set<string | null>();
        for (const c of claimed) {
          const step = must(c.steps.find((s) => s.name === c.stepName), c.stepName);
          const token = must(request.tokens.find((t) => t.leaseToken === step.leaseToken), 'token');
          expect(step.callbackTokenHash).toBe(token.callbackTokenHash);
          expect((await stepOf(store, c.workflow.id, c.stepName)).callbackTokenHash).toBe(token.callbackTokenHash);
          hashes.add(step.callbackTokenHash);
        }
        expect(hashes.size).toBe(2);
        await store.transact(w1, (tx) => tx.updateStep('a', { callbackTokenHash: null }));
        expect((await stepOf(store, w1, 'a')).callbackTokenHash).toBeNull();

        const replacement = sha256('replacement');
        await store.transact(w2, (tx) => tx.updateStep('b', { callbackTokenHash: replacement }));
        expect((await stepOf(store, w2, 'b')).callbackTokenHash).toBe(replacement);
      });
    });

    describe('listWorkflows', () => {
      test('listWorkflows filters by tenant, status, type and service slug', async ({ store }) => {
        const rows: { id: string; tenantId: string; status: WorkflowStatus; type: string; serviceSlug: string | null }[] = [];
        const combos: [string, WorkflowStatus, string, string | null][] = [
          ['tenant-a', 'running', 'provision', 'svc-1'],
          ['tenant-a', 'failed', 'provision', 'svc-2'],
          ['tenant-a', 'completed', 'deprovision', 'svc-1'],
          ['tenant-b', 'running', 'provision', null],
          ['tenant-b', 'failed', 'deprovision', 'svc-1'],
          ['tenant-c', 'pending', 'provision', 'svc-2'],
          ['tenant-a', 'running', 'deprovision', null],
          ['tenant-c', 'rolled_back', 'provision', 'svc-1'],
        ];
        for (const [i, [tenantId, status, type, serviceSlug]] of combos.entries()) {
          const id = await seed(store, ids, { tenantId, status, type, serviceSlug, createdAt: new Date(T0 - 10_000 + i * 100) });
          rows.push({ id, tenantId, status, type, serviceSlug });
        }
        const newestFirst = [...rows].reverse();
        const expectIds = async (query: Omit<StoreListQuery, 'limit'>, keep: (r: (typeof rows)[number]) => boolean): Promise<void> => {
          const expected = newestFirst.filter(keep).map((r) => r.id);
          expect(expected.length, JSON.stringify(query)).toBeGreaterThan(0);
          expect((await store.listWorkflows({ ...query, limit: 50 })).map((w) => w.id), JSON.stringify(query)).toEqual(expected);
        };
        await expectIds({}, () => true);
        await expectIds({ tenantId: 'tenant-a' }, (r) => r.tenantId === 'tenant-a');
        await expectIds({ status: 'running' }, (r) => r.status === 'running');
        await expectIds({ type: 'deprovision' }, (r) => r.type === 'deprovision');
        await expectIds({ serviceSlug: 'svc-1' }, (r) => r.serviceSlug === 'svc-1');
        await expectIds({ tenantId: 'tenant-a', status: 'running' }, (r) => r.tenantId === 'tenant-a' && r.status === 'running');
        await expectIds(
          { tenantId: 'tenant-a', type: 'provision', serviceSlug: 'svc-2' },
          (r) => r.tenantId === 'tenant-a' && r.type === 'provision' && r.serviceSlug === 'svc-2',
        );
        expect(await store.listWorkflows({ tenantId: 'tenant-z', limit: 50 })).toEqual([]);
        expect(await store.listWorkflows({ tenantId: 'tenant-b', status: 'completed', limit: 50 })).toEqual([]);
        const listed = await store.listWorkflows({ tenantId: 'tenant-c', status: 'pending', limit: 50 });
        expect(listed).toEqual([await store.getWorkflow(must(rows[5], 'row').id)]);
      });

      test('createdAfter is inclusive and createdBefore is exclusive', async ({ store }) => {
        const at = (offset: number): Date => new Date(T0 - offset);
        const byOffset = new Map<number, string>();
        for (const offset of [4_000, 3_000, 2_000, 1_000]) byOffset.set(offset, await seed(store, ids, { createdAt: at(offset) }));
        const list = async (query: Omit<StoreListQuery, 'limit'>): Promise<(string | undefined)[]> =>
          (await store.listWorkflows({ ...query, limit: 50 })).map((w) => w.id);
        expect(await list({ createdAfter: at(3_000) })).toEqual([byOffset.get(1_000), byOffset.get(2_000), byOffset.get(3_000)]);
        expect(await list({ createdBefore: at(2_000) })).toEqual([byOffset.get(3_000), byOffset.get(4_000)]);
        expect(await list({ createdAfter: at(3_000), createdBefore: at(1_000) })).toEqual([byOffset.get(2_000), byOffset.get(3_000)]);
        expect(await list({ createdAfter: at(2_000), createdBefore: at(2_000) })).toEqual([]);
        expect(await list({ createdAfter: at(2_000 + 1), createdBefore: at(2_000 - 1) })).toEqual([byOffset.get(2_000)]);
      });

      test('listWorkflows returns newest first and honours the limit', async ({ store }) => {
        const byOffset = new Map<number, string>();
        for (const offset of [3, 1, 5, 2, 4]) byOffset.set(offset, await seed(store, ids, { createdAt: new Date(T0 - offset * 1_000) }));
        const newest = [1, 2, 3, 4, 5].map((o) => byOffset.get(o));
        expect((await store.listWorkflows({ limit: 3 })).map((w) => w.id)).toEqual(newest.slice(0, 3));
        expect((await store.listWorkflows({ limit: 1 })).map((w) => w.id)).toEqual(newest.slice(0, 1));
        expect((await store.listWorkflows({ limit: 200 })).map((w) => w.id)).toEqual(newest);
      });

      test('keyset paging visits every row once, newest first', async ({ store }) => {
        const count = 25;
        const made: { id: string; createdAt: Date }[] = [];
        for (let i = 0; i < count; i++) {
          // Insert out of order: 7 is coprime with 25, so this visits every offset once.
          const offset = (i * 7) % count;
          const createdAt = new Date(T0 - 100_000 + offset * 1_000);
          made.push({ id: await seed(store, ids, { createdAt }), createdAt });
        }
        const expected = [...made].sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime()).map((r) => r.id);
        const pages = await pageThrough(store, {}, 7);
        expect(pages.map((p) => p.length)).toEqual([7, 7, 7, 4, 0]);
        expect(pages.flat().map((w) => w.id)).toEqual(expected);
      });

      test('equal creation times are ordered by id descending, also across pages', async ({ store }) => {
        const same = new Date(T0 - 500);
        const tied = Array.from({ length: 10 }, () => ids.next());
        const newer = [ids.next(), ids.next()];
        const older = [ids.next(), ids.next()];
        for (const i of [3, 7, 0, 9, 5, 1, 8, 2, 6, 4]) await store.createWorkflow(workflowInput(must(tied[i], 'id'), { createdAt: same }));
        await store.createWorkflow(workflowInput(must(newer[0], 'id'), { createdAt: new Date(T0 - 100) }));
        await store.createWorkflow(workflowInput(must(newer[1], 'id'), { createdAt: new Date(T0 - 100) }));
        await store.createWorkflow(workflowInput(must(older[0], 'id'), { createdAt: new Date(T0 - 900) }));
        await store.createWorkflow(workflowInput(must(older[1], 'id'), { createdAt: new Date(T0 - 800) }));
        const expected = [must(newer[1], 'id'), must(newer[0], 'id'), ...[...tied].reverse(), must(older[1], 'id'), must(older[0], 'id')];

        expect((await store.listWorkflows({ limit: 50 })).map((w) => w.id)).toEqual(expected);
        for (const size of [3, 4]) {
          const pages = await pageThrough(store, {}, size);
          expect(pages.flat().map((w) => w.id), `pages of ${size}`).toEqual(expected);
        }
        // A position inside the tie continues with the smaller ids of the same time.
        const middle = must(tied[5], 'id');
        const after = await store.listWorkflows({ after: { createdAt: same, id: middle }, limit: 50 });
        expect(after.map((w) => w.id)).toEqual(expected.slice(expected.indexOf(middle) + 1));
      });

      test('keyset paging composes with filters', async ({ store }) => {
        const rows: { id: string; tenantId: string; status: WorkflowStatus; createdMs: number }[] = [];
        for (let i = 0; i < 20; i++) {
          const tenantId = i % 3 === 0 ? 'tenant-b' : 'tenant-a';
          const status: WorkflowStatus = i % 2 === 0 ? 'running' : 'failed';
          const createdMs = T0 - 50_000 + i * 1_000;
          rows.push({ id: await seed(store, ids, { tenantId, status, createdAt: new Date(createdMs) }), tenantId, status, createdMs });
        }
        const newestFirst = [...rows].reverse();

        const tenantA = await pageThrough(store, { tenantId: 'tenant-a' }, 4);
        expect(tenantA.map((p) => p.length)).toEqual([4, 4, 4, 1, 0]);
        expect(tenantA.flat().map((w) => w.id)).toEqual(newestFirst.filter((r) => r.tenantId === 'tenant-a').map((r) => r.id));

        const since = T0 - 40_000;
        const failedA = await pageThrough(store, { tenantId: 'tenant-a', status: 'failed', createdAfter: new Date(since) }, 2);
        const expected = newestFirst.filter((r) => r.tenantId === 'tenant-a' && r.status === 'failed' && r.createdMs >= since).map((r) => r.id);
        expect(expected).toHaveLength(4);
        expect(failedA.flat().map((w) => w.id)).toEqual(expected);
      });
    });

    describe('nextDueAt', () => {
      test('nextDueAt is null when nothing is scheduled', async ({ store }) => {
        expect(await store.nextDueAt()).toBeNull();
        await seed(store, ids, { steps: [{ name: 'a' }, { name: 'b' }] });
        expect(await store.nextDueAt()).toBeNull();
      });

      test('nextDueAt is the earliest dueAt of a claimable step', async ({ store }) => {
        const active = await seed(store, ids, {
          status: 'running',
          steps: [
            { name: 'later', dueAt: new Date(T0 + 9_000) },
            { name: 'soon', dueAt: new Date(T0 + 5_000) },
            { name: 'done', dueAt: new Date(T0 + 1_000) },
          ],
        });
        await store.transact(active, (tx) => tx.updateStep('done', { status: 'completed' }));
        await seed(store, ids, { status: 'failed', steps: [{ name: 'halted', dueAt: new Date(T0 + 2_000) }] });
        await seed(store, ids, { status: 'completed', steps: [{ name: 'finished', dueAt: new Date(T0 + 3_000) }] });
        expect(await store.nextDueAt()).toEqual(new Date(T0 + 5_000));

        await store.transact(active, (tx) => tx.updateStep('soon', { dueAt: null }));
        expect(await store.nextDueAt()).toEqual(new Date(T0 + 9_000));

        const overdue = await seed(store, ids, { status: 'rolling_back', steps: [{ name: 'undo', dueAt: new Date(T0 - 4_000) }] });
        await store.transact(overdue, (tx) => tx.updateStep('undo', { status: 'compensating' }));
        expect(await store.nextDueAt()).toEqual(new Date(T0 - 4_000));

        await store.transact(overdue, (tx) => tx.updateWorkflow({ status: 'rollback_failed' }));
        expect(await store.nextDueAt()).toEqual(new Date(T0 + 9_000));
      });

      test('nextDueAt ignores leases', async ({ store }) => {
        await seed(store, ids, { steps: [{ name: 'a', dueAt: new Date(T0 - 100) }, { name: 'b', dueAt: new Date(T0 + 100) }] });
        expect(await store.claimSteps(claimRequest('w1', 1, 60_000))).toHaveLength(1);
        expect(await store.nextDueAt()).toEqual(new Date(T0 - 100));
      });
    });

    it('the skip list names only cases of this contract', () => {
      expect(Object.keys(skip).filter((title) => !titles.has(title))).toEqual([]);
    });
  });
}

// --- helpers -----------------------------------------------------------------

interface IdSource {
  next(): string;
}

/**
 * Ids shaped like UUIDs (so that a store may use a `uuid` column) that
 * increase in creation order under every collation: lowercase hex, fixed width.
 */
function createIdSource(): IdSource {
  let n = 0;
  return { next: () => uuidOf(0xa, ++n) };
}

function uuidOf(kind: number, n: number): string {
  const tail = n.toString(16).padStart(12, '0');
  return `${kind.toString(16).padStart(8, '0')}-0000-4000-8000-${tail}`;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

let tokenSerial = 0;

function claimRequest(workerId: string, limit: number, leaseMs = 30_000): ClaimRequest {
  const tokens: ClaimToken[] = Array.from({ length: limit }, () => {
    const n = ++tokenSerial;
    return { leaseToken: uuidOf(0xc, n), callbackTokenHash: sha256(`callback-token-${n}`) };
  });
  return { workerId, leaseMs, limit, tokens };
}

interface StepSpec {
  name: string;
  position?: number;
  dependsOn?: string[];
  maxAttempts?: number;
  dueAt?: Date | null;
}

interface WorkflowSpec {
  tenantId?: string;
  type?: string;
  serviceSlug?: string | null;
  status?: WorkflowStatus;
  createdAt?: Date;
  idempotencyKey?: string | null;
  input?: unknown;
  steps?: StepSpec[];
  history?: NewHistoryEntry[];
}

function workflowInput(id: string, spec: WorkflowSpec = {}): CreateWorkflowInput {
  const steps: NewStep[] = (spec.steps ?? [{ name: 'a' }]).map((s, i) => ({
    name: s.name,
    position: s.position ?? i,
    dependsOn: s.dependsOn ?? [],
    maxAttempts: s.maxAttempts ?? 3,
    dueAt: s.dueAt ?? null,
  }));
  return {
    workflow: {
      id,
      tenantId: spec.tenantId ?? 'tenant-a',
      type: spec.type ?? 'provision',
      serviceSlug: spec.serviceSlug === undefined ? 'svc' : spec.serviceSlug,
      status: spec.status ?? 'pending',
      definitionVersion: 'v1',
      input: spec.input ?? { plan: 'basic' },
      idempotencyKey: spec.idempotencyKey ?? null,
      createdAt: spec.createdAt ?? new Date(T0),
    },
    steps,
    history: spec.history ?? [],
  };
}

async function seed(store: WorkflowStore, ids: IdSource, spec: WorkflowSpec): Promise<string> {
  const id = ids.next();
  const result = await store.createWorkflow(workflowInput(id, spec));
  if (!result.created) throw new Error(`seeding ${id} returned an existing workflow`);
  return id;
}

function note(action: string): NewHistoryEntry {
  return { kind: 'note', stepName: null, from: null, to: null, actor: null, reason: null, action, detail: null };
}

async function stepOf(store: WorkflowStore, workflowId: string, name: string): Promise<StepRecord> {
  return must((await store.getSteps(workflowId)).find((s) => s.name === name), `${workflowId}/${name}`);
}

async function snapshot(
  store: WorkflowStore,
  id: string,
): Promise<{ workflow: WorkflowRecord | null; steps: StepRecord[]; history: HistoryRecord[] }> {
  return { workflow: await store.getWorkflow(id), steps: await store.getSteps(id), history: await store.getHistory(id) };
}

async function pageThrough(store: WorkflowStore, query: Omit<StoreListQuery, 'limit' | 'after'>, size: number): Promise<WorkflowRecord[][]> {
  const pages: WorkflowRecord[][] = [];
  let after: StoreListQuery['after'];
  for (let guard = 0; guard < 1_000; guard++) {
    const page = await store.listWorkflows({ ...query, limit: size, ...(after ? { after } : {}) });
    pages.push(page);
    expect(page.length).toBeLessThanOrEqual(size);
    const last = page[page.length - 1];
    if (!last) return pages;
    after = { createdAt: last.createdAt, id: last.id };
  }
  throw new Error('paging did not end');
}

function keys(claimed: ClaimedStep[]): Set<string> {
  return new Set(claimed.map((c) => `${c.workflow.id}/${c.stepName}`));
}

function expectIncreasingSeq(history: HistoryRecord[]): void {
  for (let i = 1; i < history.length; i++) {
    expect(must(history[i], 'row').seq).toBeGreaterThan(must(history[i - 1], 'row').seq);
  }
}

function must<T>(value: T | null | undefined, what: string): T {
  if (value === null || value === undefined) throw new Error(`expected ${what}`);
  return value;
}

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/**
 * Lets `promise` run until it settles or the event loop has gone round a few
 * times with nothing settling it. It never fails: it only gives a store that
 * wrongly ignores a lock the chance to do so before the lock is released.
 */
async function settledOrIdle(promise: Promise<unknown>): Promise<void> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let turn = 0; turn < 50 && !settled; turn++) await new Promise<void>((r) => setImmediate(r));
}
