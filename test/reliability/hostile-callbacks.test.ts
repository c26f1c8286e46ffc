/**
 * Guessing callback tokens. A callback token is the only credential of the
 * callback endpoint, so a refusal must not say why: an unknown, used,
 * expired, stale (earlier attempt) or otherwise dead token — or anything
 * that merely looks like one — gets the same error (code, message, and no
 * extra fields naming a workflow or step), through the engine and through the
 * HTTP callback route (same status, headers and body but the request id).
 * A refused token changes nothing, and a guess never takes a workflow's lock
 * (the lookup is by the token's hash; no transaction starts for an unknown one).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineWorkflow, step, type WorkflowDefinition } from '../../src/core/define-workflow.js';
import { hashToken } from '../../src/engine/tokens.js';
import { createAdminHandler } from '../../src/fetch.js';
import { caseTimeoutMs, iterations, reliabilityStores } from './support/iterations.js';
import { reportedCase } from './support/report.js';
import { createRig, type Rig } from './support/rig.js';

const SUITE = 'hostile-callbacks';
const REFUSED = { name: 'NotFoundError', code: 'not_found', message: 'callback token is unknown, used or expired' };

interface World {
  tokens: Map<string, string[]>;
}

function definitions(world: World): WorkflowDefinition<any, any>[] {
  return [
    defineWorkflow({
      name: 'vendor_signup',
      input: z.object({ plan: z.string() }),
      steps: {
        vendor: step({
          retry: { maximumAttempts: 3, initialIntervalMs: 1000, jitter: 0 },
          run: (ctx) => {
            const minted = world.tokens.get(ctx.workflowId) ?? [];
            minted.push(ctx.callbackToken);
            world.tokens.set(ctx.workflowId, minted);
            return ctx.waitForCallback({ timeoutMs: 10_000 });
          },
          compensate: () => {},
        }),
        after: step({ run: () => 'done' }),
      },
    }),
  ];
}

/** Everything a caller can observe of a refusal: the error's class, code, message and own fields. */
function observe(err: unknown): Record<string, unknown> {
  const e = err as Error & Record<string, unknown>;
  // Own fields that carry a value (a workflow id or step name here would say which token it was).
  const own = Object.fromEntries(Object.keys(e).filter((k) => k !== 'stack' && e[k] !== undefined).map((k) => [k, e[k]]));
  return { name: e.name, code: e['code'], message: e.message, own };
}

async function refusal(rig: Rig, token: unknown): Promise<Record<string, unknown>> {
  try {
    await rig.engine.completeCallback(token as string, { status: 'success', output: { account: 'forged' } });
  } catch (err) {
    return observe(err);
  }
  return { accepted: true };
}

async function snapshot(rig: Rig, ids: string[]): Promise<string> {
  return JSON.stringify(await Promise.all(ids.map((id) => rig.read(id))));
}

/**
 * Workflows whose tokens are dead in every way a token can die. Returns the
 * dead tokens by kind, and a live one (whose step still waits) to derive
 * look-alikes from.
 */
async function deadTokens(rig: Rig, world: World): Promise<{ ids: string[]; dead: Record<string, string>; live: string }> {
  const start = async () => (await rig.engine.start('vendor_signup', { tenantId: 't1', input: { plan: 'pro' } })).id;
  const used = await start();
  const usedByFailure = await start();
  const stale = await start();
  const expired = await start();
  const skipped = await start();
  const rolledBack = await start();
  await rig.engine.drain();
  const first = (id: string) => world.tokens.get(id)![0]!;
  await rig.engine.completeCallback(first(used), { status: 'success', output: { account: 'a' } });
  await rig.engine.completeCallback(first(usedByFailure), { status: 'failed', error: 'no' });
  await rig.engine.completeCallback(first(stale), { status: 'failed', error: 'retry me' });
  await rig.engine.forceComplete(skipped);
  // The rolled-back workflow's step completed first, so its token was used, then undone.
  await rig.engine.completeCallback(first(rolledBack), { status: 'success', output: { account: 'b' } });
  await rig.engine.rollback(rolledBack);
  // Retries of the failed callbacks are due after 1 s: `stale` gets a second token.
  rig.clock.advance(1000);
  await rig.engine.drain();
  expect(world.tokens.get(stale)).toHaveLength(2);
  // A workflow whose token stays valid: it waits until 1 s + 10 s.
  const live = await start();
  await rig.engine.drain();
  // Past the 10 s timeout of `expired`, before `live`'s.
  rig.clock.advance(9_500);
  const ids = [used, usedByFailure, stale, expired, skipped, rolledBack, live];
  // `expired` waits past its deadline: its timeout is due but not yet processed, so its hash is still stored.
  const stored = await rig.read(expired);
  expect(stored.steps[0]!.status).toBe('waiting_callback');
  expect(stored.steps[0]!.callbackTokenHash).toBe(await hashToken(secretOf(first(expired))));
  return {
    ids,
    dead: {
      unknown: Buffer.alloc(32, 7).toString('base64url'),
      used_by_success: first(used),
      used_by_failure: first(usedByFailure),
      earlier_attempt: first(stale),
      expired: first(expired),
      skipped_by_force_complete: first(skipped),
      rolled_back_workflow: first(rolledBack),
    },
    live: world.tokens.get(live)![0]!,
  };
}

/** The secret part of a token (`<workflow id>.<step position>.<secret>`), whose SHA-256 the step stores. */
function secretOf(token: string): string {
  return token.slice(token.lastIndexOf('.') + 1);
}

/** Strings that resemble a live token without being it; `otherId` is another workflow's id. */
function lookAlikes(live: string, liveHash: string, otherId: string): Record<string, unknown> {
  const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1);
  const secret = secretOf(live);
  const liveId = live.slice(0, live.indexOf('.'));
  return {
    one_character_changed: flip(live, 5),
    secret_character_changed: flip(live, live.length - 10),
    its_secret_alone: secret,
    its_secret_on_another_step: `${liveId}.1.${secret}`,
    its_secret_on_another_workflow: `${otherId}.0.${secret}`,
    position_padded: `${liveId}.00.${secret}`,
    position_negative: `${liveId}.-0.${secret}`,
    nul_in_workflow_id: `${liveId}\u0000.0.${secret}`,
    workflow_id_too_long: `${'w'.repeat(129)}.0.${secret}`,
    last_character_changed: flip(live, live.length - 1),
    truncated: live.slice(0, -1),
    extended: `${live}A`,
    upper_cased: live.toUpperCase() === live ? live.toLowerCase() : live.toUpperCase(),
    padded: ` ${live} `,
    its_sha256: liveHash,
    empty: '',
    short: 'abc',
    long: 'x'.repeat(5000),
    unicode: '\u{1F511}'.repeat(20),
    nul_bytes: '\u0000'.repeat(40),
    number: 12345678901234567890,
    null: null,
    object: { token: live },
  };
}

const stores = reliabilityStores();

describe.each(stores)('hostile callbacks on $name store', (factory) => {
  it('every dead token and every look-alike is refused with the same error, and changes nothing', async () => {
    await reportedCase({ suite: SUITE, fault: 'unknown, used, expired, stale, skipped and look-alike callback tokens', stores: [factory.name] }, async (tally) => {
      const world: World = { tokens: new Map() };
      const rig = await createRig(factory, definitions(world));
      try {
        const { ids, dead, live } = await deadTokens(rig, world);
        const before = await snapshot(rig, ids);
        const guesses = { unknown: dead['unknown'], ...lookAlikes(live, await hashToken(secretOf(live)), ids[0]!) };
        const seen: Record<string, unknown> = {};
        const transacts = rig.store.count('transact');
        for (const [kind, token] of Object.entries(guesses)) {
          seen[kind] = await refusal(rig, token);
          tally.iterations++;
        }
        // A guess is looked up by its hash and goes no further: no workflow is locked for it.
        expect(rig.store.count('transact'), 'a guessed token took a workflow lock').toBe(transacts);
        for (const [kind, token] of Object.entries(dead)) {
          seen[kind] = await refusal(rig, token);
          tally.iterations++;
        }
        // One answer for all of them: nothing tells a used token from an expired or an invented one.
        const expected = { ...REFUSED, own: { name: 'NotFoundError', code: 'not_found' } };
        expect(seen).toEqual(Object.fromEntries([...Object.keys(guesses), ...Object.keys(dead)].map((k) => [k, expected])));
        expect(await snapshot(rig, ids), 'a refused callback changed a workflow').toBe(before);
        // The live token still works afterwards: guessing around it did not burn it.
        await rig.engine.completeCallback(live, { status: 'success', output: { account: 'real' } });
        const liveId = ids.at(-1)!;
        expect((await rig.read(liveId)).steps[0]).toMatchObject({ status: 'completed', output: { account: 'real' } });
        expect(await rig.violations(ids)).toEqual([]);
      } finally {
        await rig.close();
      }
    });
  });

  it(
    'random guesses are refused alike, never take a lock, and change nothing',
    async () => {
      await reportedCase({ suite: SUITE, fault: 'random token guesses (fast-check)', stores: [factory.name] }, async (tally) => {
        const world: World = { tokens: new Map() };
        const rig = await createRig(factory, definitions(world));
        try {
          const { id } = await rig.engine.start('vendor_signup', { tenantId: 't1', input: { plan: 'pro' } });
          await rig.engine.drain();
          const live = world.tokens.get(id)![0]!;
          const before = await snapshot(rig, [id]);
          const transacts = rig.store.count('transact');
          const base64url = fc.string({ unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'), minLength: 16, maxLength: 64 });
          const nearLive = fc.tuple(fc.nat({ max: live.length - 1 }), fc.constantFrom(...'AbZ09-_')).map(([i, ch]) => live.slice(0, i) + ch + live.slice(i + 1)).filter((t) => t !== live);
          const guess = fc.oneof(base64url, nearLive, fc.string({ unit: 'grapheme', maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 300 }));
          await fc.assert(
            fc.asyncProperty(guess, async (token) => {
              tally.iterations++;
              expect(await refusal(rig, token)).toEqual({ ...REFUSED, own: { name: 'NotFoundError', code: 'not_found' } });
            }),
            { numRuns: iterations(factory.name === 'memory' ? 200 : 60, 2) },
          );
          expect(await snapshot(rig, [id])).toBe(before);
          expect(rig.store.count('transact'), 'a guess took a workflow lock').toBe(transacts);
          await rig.engine.completeCallback(live, { status: 'success' });
          expect((await rig.read(id)).steps[0]!.status).toBe('completed');
        } finally {
          await rig.close();
        }
      });
    },
    caseTimeoutMs(),
  );

  it('the HTTP callback route answers every dead token with the same response', async () => {
    await reportedCase({ suite: SUITE, fault: 'dead callback tokens over HTTP (POST /provisioning/callback)', stores: [factory.name] }, async (tally) => {
      const world: World = { tokens: new Map() };
      const rig = await createRig(factory, definitions(world));
      try {
        const { ids, dead, live } = await deadTokens(rig, world);
        const handler = createAdminHandler(rig.engine, { authenticate: () => null });
        const post = async (token: string) => {
          const response = await handler(
            new Request('http://localhost/api/v1/provisioning/callback', {
              method: 'POST',
              headers: { 'content-type': 'application/json' },
              body: JSON.stringify({ callback_token: token, status: 'success', credentials: { password: 'x' } }),
            }),
          );
          const body = (await response.json()) as { error?: { request_id?: unknown } };
          if (body.error) delete body.error.request_id;
          const headers: Record<string, string> = {};
          response.headers.forEach((value, key) => {
            if (key !== 'x-request-id' && key !== 'date') headers[key] = value;
          });
          return { status: response.status, headers, body };
        };
        const before = await snapshot(rig, ids);
        const tokens = { ...dead, one_character_changed: live.slice(0, -1) + (live.endsWith('A') ? 'B' : 'A'), short: 'abc' };
        const answers: Record<string, unknown> = {};
        for (const [kind, token] of Object.entries(tokens)) {
          answers[kind] = await post(token);
          tally.iterations++;
        }
        const first = answers['unknown'] as { status: number; body: unknown };
        expect(first.status).toBe(404);
        expect(first.body).toEqual({ error: { code: 'not_found', message: expect.any(String) } });
        expect(answers).toEqual(Object.fromEntries(Object.keys(tokens).map((k) => [k, first])));
        expect(await snapshot(rig, ids)).toBe(before);
        // And the live token is accepted through the same route.
        expect((await post(live)).status).toBe(200);
      } finally {
        await rig.close();
      }
    });
  });
});
