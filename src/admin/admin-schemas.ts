/**
 * zod schemas of every request and response of the admin and tenant HTTP API.
 * The handlers validate with them, the wire mapping is typed by them, and the
 * OpenAPI document is generated from them with `z.toJSONSchema`.
 *
 * @module
 */
import { z } from 'zod';
import { STEP_STATUS } from '../core/step-status.js';
import { WORKFLOW_STATUS } from '../core/workflow-status.js';
import { WORKFLOW_ID_PATTERN } from '../engine/ids.js';

// ---------------------------------------------------------------- shared parts

/** A workflow status on the wire. */
export const WorkflowStatusSchema = z.enum(WORKFLOW_STATUS).describe('Workflow status.');

/** A step status on the wire. */
export const StepStatusSchema = z.enum(STEP_STATUS).describe('Step status.');

/** An ISO 8601 UTC timestamp, as `Date.prototype.toISOString` writes it. */
export const TimestampSchema = z.iso.datetime().describe('ISO 8601 timestamp, UTC.');

/** An error recorded on a workflow or a step. */
export const WorkflowErrorSchema = z
  .object({
    code: z.string().describe('Stable error code, e.g. `poll_timeout`, `callback_failed`, `step_failed`.'),
    message: z.string(),
    step: z.string().optional().describe('The step the error came from (on a workflow error).'),
    detail: z.unknown().optional().describe('Extra detail, redacted like outputs.'),
  })
  .describe('An error recorded on a workflow or step.');

// ---------------------------------------------------------------- responses

/** A step of a workflow, in definition order. */
export const StepResponseSchema = z.object({
  name: z.string(),
  status: StepStatusSchema,
  depends_on: z.array(z.string()),
  retry_count: z.number().int().min(0).describe('Automatic retries plus admin retries.'),
  max_retries: z.number().int().min(0).describe('`maximumAttempts - 1` of the step\'s retry policy.'),
  started_at: TimestampSchema.nullable(),
  completed_at: TimestampSchema.nullable(),
  next_attempt_at: TimestampSchema.nullable().describe('When a pending (or compensating) step is next due.'),
  next_poll_at: TimestampSchema.nullable().describe('When a waiting_poll step polls next.'),
  poll_count: z.number().int().min(0),
  output: z.unknown().describe('The step\'s output (secrets redacted); null until it completes.'),
  error: WorkflowErrorSchema.nullable(),
});

/** One row of a workflow's history: a transition, an admin action, or a note. */
export const HistoryEntryResponseSchema = z.object({
  at: TimestampSchema,
  kind: z.enum(['workflow', 'step', 'admin', 'note']),
  step_name: z.string().nullable(),
  from: z.string().nullable(),
  to: z.string().nullable(),
  actor: z.string().nullable(),
  reason: z.string().nullable(),
  action: z.string().nullable().describe('Admin operation name, or what a note records.'),
  detail: z.unknown(),
});

/** A workflow as listed. */
export const WorkflowResponseSchema = z.object({
  id: z.string(),
  tenant_id: z.string(),
  type: z.string().describe('The workflow definition name.'),
  service_slug: z.string().nullable(),
  status: WorkflowStatusSchema,
  current_step: z.string().nullable(),
  retry_count: z.number().int().min(0).describe('Sum of the steps\' retry counts.'),
  error: WorkflowErrorSchema.nullable(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
  completed_at: TimestampSchema.nullable(),
});

/** A workflow with its input, output, steps and history. */
export const WorkflowDetailResponseSchema = WorkflowResponseSchema.extend({
  input: z.unknown().describe('The validated input (secrets redacted).'),
  output: z.unknown().describe('The workflow output (secrets redacted).'),
  steps: z.array(StepResponseSchema),
  history: z.array(HistoryEntryResponseSchema),
});

/** `meta` of every 200 response. */
export const ResponseMetaSchema = z.object({
  request_id: z.string(),
});

/** `meta` of a list response. */
export const ListMetaSchema = ResponseMetaSchema.extend({
  limit: z.number().int().min(1).max(200),
  next_cursor: z.string().nullable().describe('Pass as `cursor` to get the next page; null on the last page.'),
  has_more: z.boolean(),
});

/** 200 body of the list routes. */
export const WorkflowListEnvelopeSchema = z.object({
  data: z.array(WorkflowResponseSchema),
  meta: ListMetaSchema,
});

/** 200 body of the routes that answer one workflow. */
export const WorkflowDetailEnvelopeSchema = z.object({
  data: WorkflowDetailResponseSchema,
  meta: ResponseMetaSchema,
});

/** 200 body of the callback route. */
export const CallbackAcceptedEnvelopeSchema = z.object({
  data: z.object({ accepted: z.literal(true) }),
  meta: ResponseMetaSchema,
});

/** The error codes of {@link ErrorResponseSchema}, by HTTP status. */
export const ERROR_CODE_STATUS = {
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  internal_error: 500,
} as const;

/** An error code of the error envelope. */
export type ApiErrorCode = keyof typeof ERROR_CODE_STATUS;

/** Body of every error except 422. */
export const ErrorResponseSchema = z.object({
  error: z.object({
    code: z.enum(Object.keys(ERROR_CODE_STATUS) as [ApiErrorCode, ...ApiErrorCode[]]),
    message: z.string(),
    request_id: z.string(),
  }),
});

/** One problem of a 422, in FastAPI's shape. */
export const ValidationErrorItemSchema = z.object({
  loc: z.array(z.union([z.string(), z.number().int()])).describe('Where: `["query","limit"]`, `["path","workflow_id"]`, `["body","status"]`.'),
  msg: z.string(),
  type: z.string().describe('Machine-readable kind, e.g. `missing`, `int_parsing`, `enum`, `json_invalid`.'),
});

/** Body of a 422 (FastAPI's `HTTPValidationError`). */
export const HttpValidationErrorSchema = z.object({
  detail: z.array(ValidationErrorItemSchema),
});

/** Body of `GET /openapi.json`. */
export const OpenApiDocumentSchema = z.record(z.string(), z.unknown()).describe('An OpenAPI 3.1 document.');

// ---------------------------------------------------------------- requests

const STEP_NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,127}$/;

/** `{workflow_id}`. */
export const WorkflowIdSchema = z.string().regex(WORKFLOW_ID_PATTERN).describe('Workflow id: 1-128 of `A-Z a-z 0-9 . _ : -`.');

/** `{step_name}`. */
export const StepNameSchema = z.string().regex(STEP_NAME_RE).describe('Step name as defined: a letter, then letters, digits, `_`, `.`, `-`.');

const ShortText = z.string().min(1).max(200);

/** Path of the routes that address one workflow. */
export const WorkflowPathSchema = z.object({ workflow_id: WorkflowIdSchema });

/** Path of `retry-step`. */
export const RetryStepPathSchema = z.object({ workflow_id: WorkflowIdSchema, step_name: StepNameSchema });

/** Path of the tenant status route. */
export const ServiceStatusPathSchema = z.object({ service_slug: ShortText.describe('The service slug given at start.') });

/** Query of the tenant list route. */
export const TenantListQuerySchema = z.object({
  status: WorkflowStatusSchema.optional(),
  type: ShortText.optional().describe('Workflow definition name.'),
  service_slug: ShortText.optional(),
  created_after: z.iso.datetime({ offset: true }).optional().describe('ISO 8601 date-time with `Z` or an offset; inclusive.'),
  created_before: z.iso.datetime({ offset: true }).optional().describe('ISO 8601 date-time with `Z` or an offset; exclusive.'),
  limit: z.coerce.number().int().min(1).max(200).default(50).describe('Page size.'),
  cursor: z.string().min(1).max(2048).optional().describe('The opaque `meta.next_cursor` of the previous page.'),
});

/** Query of the admin list route: the tenant filters plus `tenant_id`. */
export const AdminListQuerySchema = TenantListQuerySchema.extend({
  tenant_id: ShortText.optional(),
});

/** Optional body of the admin POSTs. */
export const AdminActionBodySchema = z.object({
  reason: z.string().max(2000).nullish().describe('Why; recorded in the workflow history with the actor.'),
});

/** Body of `POST /provisioning/callback`. */
export const CallbackBodySchema = z.object({
  callback_token: z.string().min(1).max(512).describe('The token the step handed to the external system.'),
  status: z.enum(['success', 'failed']),
  endpoint: z.string().max(2048).nullish(),
  credentials: z.record(z.string(), z.unknown()).nullish().describe('Stored in the step output; redacted in responses.'),
  error: z.union([z.string().max(10_000), z.record(z.string(), z.unknown())]).nullish().describe('Why the external work failed.'),
  metadata: z.record(z.string(), z.unknown()).nullish(),
});

/** A WorkflowResponse on the wire. */
export type WorkflowResponse = z.output<typeof WorkflowResponseSchema>;
/** A WorkflowDetailResponse on the wire. */
export type WorkflowDetailResponse = z.output<typeof WorkflowDetailResponseSchema>;
/** A step on the wire. */
export type StepResponse = z.output<typeof StepResponseSchema>;
/** A history row on the wire. */
export type HistoryEntryResponse = z.output<typeof HistoryEntryResponseSchema>;
/** An error recorded on a workflow or step, on the wire. */
export type WorkflowErrorResponse = z.output<typeof WorkflowErrorSchema>;
/** One item of a 422's `detail`. */
export type ValidationErrorItem = z.output<typeof ValidationErrorItemSchema>;
/** The error envelope. */
export type ErrorResponse = z.output<typeof ErrorResponseSchema>;
