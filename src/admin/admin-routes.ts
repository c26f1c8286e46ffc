/**
 * The route table of the admin and tenant HTTP API, as data: method, path
 * pattern (relative to the prefix), schemas, access rule and handler. Handlers
 * take plain data and answer `{ status, body }`; bindings only translate.
 *
 * @module
 */
import type { z } from 'zod';
import { isSagalineError } from '../errors.js';
import type { ListWorkflowsQuery, WorkflowDetail, WorkflowEngineApi } from '../engine/engine-types.js';
import { errorResult, ok, type AdminResult } from './admin-envelopes.js';
import type { AdminRouteContext } from './admin-route-types.js';
import { defineRoute, type AdminRoute } from './admin-route-types.js';
import {
  AdminActionBodySchema,
  AdminListQuerySchema,
  CallbackAcceptedEnvelopeSchema,
  CallbackBodySchema,
  OpenApiDocumentSchema,
  RetryStepPathSchema,
  ServiceStatusPathSchema,
  TenantListQuerySchema,
  WorkflowDetailEnvelopeSchema,
  WorkflowListEnvelopeSchema,
  WorkflowPathSchema,
} from './admin-schemas.js';
import { toWorkflowDetailResponse, toWorkflowResponse } from './admin-wire.js';

/** Same body for an unknown, a used and an expired token: the answer reveals nothing. */
const CALLBACK_NOT_FOUND = 'callback token not found, already used, or expired';
/** Same body for a missing workflow and another tenant's. */
const WORKFLOW_NOT_FOUND = 'workflow not found';
/** The 403 of a tenant route for a principal without a tenant. */
export const NO_TENANT = 'the principal has no tenant';

type ListFilters = {
  status?: ListWorkflowsQuery['status'] | undefined;
  type?: string | undefined;
  service_slug?: string | undefined;
  created_after?: string | undefined;
  created_before?: string | undefined;
  limit: number;
  cursor?: string | undefined;
};

function toEngineQuery(filters: ListFilters, tenantId: string | undefined): ListWorkflowsQuery {
  const query: ListWorkflowsQuery = { limit: filters.limit };
  if (tenantId !== undefined) query.tenantId = tenantId;
  if (filters.status !== undefined) query.status = filters.status;
  if (filters.type !== undefined) query.type = filters.type;
  if (filters.service_slug !== undefined) query.serviceSlug = filters.service_slug;
  if (filters.created_after !== undefined) query.createdAfter = new Date(filters.created_after);
  if (filters.created_before !== undefined) query.createdBefore = new Date(filters.created_before);
  if (filters.cursor !== undefined) query.cursor = filters.cursor;
  return query;
}

async function listPage(context: AdminRouteContext, filters: ListFilters, tenantId: string | undefined, requestId: string): Promise<AdminResult> {
  const page = await context.engine.list(toEngineQuery(filters, tenantId));
  const nextCursor = page.nextCursor ?? null;
  return ok(
    page.items.map((item) => toWorkflowResponse(item, context.redact)),
    requestId,
    { limit: filters.limit, next_cursor: nextCursor, has_more: nextCursor !== null },
  );
}

function detail(context: AdminRouteContext, workflow: WorkflowDetail, requestId: string): AdminResult {
  return ok(toWorkflowDetailResponse(workflow, context.redact), requestId);
}

const ALLOWED_FROM = {
  'force-complete': 'pending, running, failed',
  rollback: 'pending, running, failed, completed, rollback_failed',
  'retry-step': 'a failed step in a failed or running workflow',
} as const;

/** A 409 whose message names the current status (read again, since the engine's message is its own). */
async function conflict(
  engine: WorkflowEngineApi,
  operation: keyof typeof ALLOWED_FROM,
  workflowId: string,
  requestId: string,
  stepName?: string,
): Promise<AdminResult> {
  let current = 'in its current status';
  try {
    const workflow = await engine.get(workflowId);
    current = `workflow status is "${workflow.status}"`;
    const step = stepName === undefined ? undefined : workflow.steps.find((s) => s.name === stepName);
    if (step) current += `, step "${step.name}" status is "${step.status}"`;
  } catch {
    // The workflow vanished between the two reads: the generic wording stays.
  }
  const what = stepName === undefined ? operation : `retry step "${stepName}"`;
  return errorResult('conflict', requestId, `cannot ${what}: ${current}; allowed from ${ALLOWED_FROM[operation]}`);
}

function isConflict(err: unknown): boolean {
  return isSagalineError(err, 'conflict') || isSagalineError(err, 'invalid_transition');
}

function adminActionOptions(context: AdminRouteContext, principal: unknown, body: { reason?: string | null | undefined } | undefined) {
  const options: { actor?: string; reason?: string } = {};
  const actor = context.actorOf(principal);
  if (actor) options.actor = actor;
  if (typeof body?.reason === 'string') options.reason = body.reason;
  return options;
}

const ADMIN_ERRORS = [401, 403, 404] as const;
const ADMIN_TAGS = ['admin'];
const TENANT_TAGS = ['tenant'];

/**
 * An admin mutation (force-complete, retry-step, rollback): admin access, an
 * optional `{reason}` body, the detail envelope, and a 409 naming the status.
 * Only the engine call differs.
 */
function adminMutationRoute<P extends typeof WorkflowPathSchema | typeof RetryStepPathSchema>(spec: {
  operation: keyof typeof ALLOWED_FROM;
  path: string;
  operationId: string;
  summary: string;
  description: string;
  params: P;
  call: (engine: WorkflowEngineApi, params: z.output<P>, options: { actor?: string; reason?: string }) => Promise<WorkflowDetail>;
  stepOf?: (params: z.output<P>) => string;
}): AdminRoute {
  return defineRoute({
    method: 'POST',
    path: spec.path,
    operationId: spec.operationId,
    summary: spec.summary,
    description: spec.description,
    tags: ADMIN_TAGS,
    access: 'admin',
    mutation: true,
    params: spec.params as typeof WorkflowPathSchema,
    query: undefined,
    body: { schema: AdminActionBodySchema, required: false },
    response: WorkflowDetailEnvelopeSchema,
    errors: [...ADMIN_ERRORS, 409, 413, 415],
    engineValidationSource: 'body',
    handler: async ({ params, body, principal, requestId }, context) => {
      const typed = params as z.output<P>;
      try {
        return detail(context, await spec.call(context.engine, typed, adminActionOptions(context, principal, body)), requestId);
      } catch (err) {
        if (isConflict(err)) return conflict(context.engine, spec.operation, params.workflow_id, requestId, spec.stepOf?.(typed));
        throw err;
      }
    },
  });
}

/** The admin and tenant routes, paths relative to the prefix. */
export const ADMIN_ROUTES: readonly AdminRoute[] = [
  defineRoute({
    method: 'GET',
    path: '/admin/provisioning/workflows',
    operationId: 'adminListWorkflows',
    summary: 'List workflows of every tenant',
    description: 'Newest first, keyset-paginated: pass `meta.next_cursor` as `cursor` for the next page.',
    tags: ADMIN_TAGS,
    access: 'admin',
    mutation: false,
    params: undefined,
    query: AdminListQuerySchema,
    body: undefined,
    response: WorkflowListEnvelopeSchema,
    errors: [401, 403],
    engineValidationSource: 'query',
    handler: ({ query, requestId }, context) => listPage(context, query, query.tenant_id, requestId),
  }),
  defineRoute({
    method: 'GET',
    path: '/admin/provisioning/workflows/{workflow_id}',
    operationId: 'adminGetWorkflow',
    summary: 'Get a workflow with its steps and history',
    description: 'Any tenant\'s workflow.',
    tags: ADMIN_TAGS,
    access: 'admin',
    mutation: false,
    params: WorkflowPathSchema,
    query: undefined,
    body: undefined,
    response: WorkflowDetailEnvelopeSchema,
    errors: ADMIN_ERRORS,
    engineValidationSource: 'path',
    handler: async ({ params, requestId }, context) => detail(context, await context.engine.get(params.workflow_id), requestId),
  }),
  adminMutationRoute({
    operation: 'force-complete',
    path: '/admin/provisioning/workflows/{workflow_id}/force-complete',
    operationId: 'adminForceCompleteWorkflow',
    summary: 'Force-complete a workflow',
    description:
      'Allowed from pending, running and failed: every pending, running or waiting step becomes skipped and the workflow completed. ' +
      'Any other status is a 409.',
    params: WorkflowPathSchema,
    call: (engine, params, options) => engine.forceComplete(params.workflow_id, options),
  }),
  adminMutationRoute({
    operation: 'retry-step',
    path: '/admin/provisioning/workflows/{workflow_id}/retry-step/{step_name}',
    operationId: 'adminRetryStep',
    summary: 'Retry a failed step',
    description:
      'The step must be failed (in a failed, or running, workflow): it becomes pending with retry_count + 1 and the workflow running. ' +
      'An unknown step is a 404; any other state a 409.',
    params: RetryStepPathSchema,
    call: (engine, params, options) => engine.retryStep(params.workflow_id, params.step_name, options),
    stepOf: (params) => params.step_name,
  }),
  adminMutationRoute({
    operation: 'rollback',
    path: '/admin/provisioning/workflows/{workflow_id}/rollback',
    operationId: 'adminRollbackWorkflow',
    summary: 'Roll a workflow back',
    description:
      'Allowed from pending, running, failed, completed and rollback_failed: compensates the completed steps in reverse completion order. ' +
      'Any other status is a 409.',
    params: WorkflowPathSchema,
    call: (engine, params, options) => engine.rollback(params.workflow_id, options),
  }),
  defineRoute({
    method: 'GET',
    path: '/provisioning/workflows',
    operationId: 'listWorkflows',
    summary: 'List the caller\'s workflows',
    description: 'Only workflows of the principal\'s tenant; newest first, keyset-paginated.',
    tags: TENANT_TAGS,
    access: 'tenant',
    mutation: false,
    params: undefined,
    query: TenantListQuerySchema,
    body: undefined,
    response: WorkflowListEnvelopeSchema,
    errors: [401, 403],
    engineValidationSource: 'query',
    handler: async ({ query, principal, requestId }, context) => {
      const tenantId = context.tenantOf(principal);
      // Checked before the handler runs; re-checked so that a missing tenant can never list every tenant.
      if (!tenantId) return errorResult('forbidden', requestId, NO_TENANT);
      return listPage(context, query, tenantId, requestId);
    },
  }),
  defineRoute({
    method: 'GET',
    path: '/provisioning/workflows/{workflow_id}',
    operationId: 'getWorkflow',
    summary: 'Get one of the caller\'s workflows',
    description: 'Another tenant\'s workflow is a 404, exactly as if it did not exist.',
    tags: TENANT_TAGS,
    access: 'tenant',
    mutation: false,
    params: WorkflowPathSchema,
    query: undefined,
    body: undefined,
    response: WorkflowDetailEnvelopeSchema,
    errors: [401, 403, 404],
    engineValidationSource: 'path',
    handler: async ({ params, principal, requestId }, context) => {
      let workflow: WorkflowDetail;
      try {
        workflow = await context.engine.get(params.workflow_id);
      } catch (err) {
        if (isSagalineError(err, 'not_found')) return errorResult('not_found', requestId, WORKFLOW_NOT_FOUND);
        throw err;
      }
      if (workflow.tenantId !== context.tenantOf(principal)) return errorResult('not_found', requestId, WORKFLOW_NOT_FOUND);
      return detail(context, workflow, requestId);
    },
  }),
  defineRoute({
    method: 'GET',
    path: '/provisioning/status/{service_slug}',
    operationId: 'getServiceStatus',
    summary: 'The caller\'s most recent workflow for a service',
    description: 'The newest workflow of the principal\'s tenant started with this `service_slug`; 404 when there is none.',
    tags: TENANT_TAGS,
    access: 'tenant',
    mutation: false,
    params: ServiceStatusPathSchema,
    query: undefined,
    body: undefined,
    response: WorkflowDetailEnvelopeSchema,
    errors: [401, 403, 404],
    engineValidationSource: 'path',
    handler: async ({ params, principal, requestId }, context) => {
      const tenantId = context.tenantOf(principal);
      if (!tenantId) return errorResult('forbidden', requestId, NO_TENANT);
      const page = await context.engine.list({ tenantId, serviceSlug: params.service_slug, limit: 1 });
      const newest = page.items[0];
      if (!newest) return errorResult('not_found', requestId, 'no workflow for this service');
      try {
        return detail(context, await context.engine.get(newest.id), requestId);
      } catch (err) {
        if (isSagalineError(err, 'not_found')) return errorResult('not_found', requestId, 'no workflow for this service');
        throw err;
      }
    },
  }),
  defineRoute({
    method: 'POST',
    path: '/provisioning/callback',
    operationId: 'completeCallback',
    summary: 'Report the result of external work',
    description:
      'Completes (`success`) or fails (`failed`) the step waiting for this token. The token is the credential: no other authentication. ' +
      'An unknown, used or expired token answers the same 404. Bodies over 64 KiB are a 413.',
    tags: TENANT_TAGS,
    access: 'public',
    mutation: false,
    params: undefined,
    query: undefined,
    body: { schema: CallbackBodySchema, required: true },
    response: CallbackAcceptedEnvelopeSchema,
    errors: [404, 413, 415],
    engineValidationSource: 'body',
    handler: async ({ body, requestId }, context) => {
      const result: Parameters<WorkflowEngineApi['completeCallback']>[1] = { status: body.status };
      if (body.endpoint != null) result.endpoint = body.endpoint;
      if (body.credentials != null) result.credentials = body.credentials;
      if (body.error != null) result.error = body.error;
      if (body.metadata != null) result.metadata = body.metadata;
      try {
        await context.engine.completeCallback(body.callback_token, result);
      } catch (err) {
        // A token whose step has moved on is as unusable as an unknown one.
        if (isSagalineError(err, 'not_found') || isConflict(err)) return errorResult('not_found', requestId, CALLBACK_NOT_FOUND);
        throw err;
      }
      return ok({ accepted: true }, requestId);
    },
  }),
  defineRoute({
    method: 'GET',
    path: '/openapi.json',
    operationId: 'getOpenApiDocument',
    summary: 'This API as an OpenAPI 3.1 document',
    description: 'Generated from the zod schemas the handlers validate with.',
    tags: ['meta'],
    access: 'public',
    mutation: false,
    params: undefined,
    query: undefined,
    body: undefined,
    response: OpenApiDocumentSchema,
    errors: [],
    engineValidationSource: 'query',
    handler: async (_input, context) => ({ status: 200, body: context.openApiDocument() }),
  }),
];
