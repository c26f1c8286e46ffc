import type { z } from 'zod';
import type { Logger } from '../core/logger.js';
import type { WorkflowEngineApi } from '../engine/engine-types.js';
import type { RedactFunction } from './admin-config.js';
import type { AdminResult } from './admin-envelopes.js';
import type { ValidationSource } from './admin-validation.js';

/** Who may call a route: admins, principals with a tenant, or anyone (the token or nothing is the credential). */
export type RouteAccess = 'admin' | 'tenant' | 'public';

/** The plain data a handler receives, validated. */
export interface AdminHandlerInput<TParams = Record<string, string>, TQuery = Record<string, unknown>, TBody = unknown> {
  params: TParams;
  query: TQuery;
  /** The validated JSON body; `undefined` when the route takes none or none was sent. */
  body: TBody;
  /** Request headers, names lower-cased. */
  headers: Record<string, string>;
  /** The authenticated principal; `null` on public routes. */
  principal: unknown;
  requestId: string;
}

/** What handlers reach besides their input. */
export interface AdminRouteContext {
  engine: WorkflowEngineApi;
  redact: RedactFunction;
  /** The principal's tenant (checked non-null before tenant handlers run). */
  tenantOf(principal: unknown): string | null;
  /** The actor recorded for admin operations. */
  actorOf(principal: unknown): string | null;
  /** The OpenAPI document for the mounted prefix. */
  openApiDocument(): Record<string, unknown>;
  logger: Logger;
}

/** A request body a route accepts (always JSON). */
export interface RouteBody<B extends z.ZodType = z.ZodType, R extends boolean = boolean> {
  schema: B;
  /** Without a body the handler gets `undefined` (optional) or the client a 422 (required). */
  required: R;
}

/** One entry of the route table: data describing the route, and its handler. */
export interface AdminRouteDefinition<
  P extends z.ZodObject | undefined = z.ZodObject | undefined,
  Q extends z.ZodObject | undefined = z.ZodObject | undefined,
  B extends z.ZodType | undefined = z.ZodType | undefined,
  R extends boolean = boolean,
> {
  method: 'GET' | 'POST';
  /** Relative to the prefix, with `{param}` segments. */
  path: string;
  operationId: string;
  summary: string;
  description: string;
  tags: string[];
  access: RouteAccess;
  /** Refused with 403 when the handler is read-only. */
  mutation: boolean;
  params: P;
  query: Q;
  body: B extends z.ZodType ? RouteBody<B, R> : undefined;
  /** The 200 body. */
  response: z.ZodType;
  /** Non-200 statuses the route can answer, for the OpenAPI document (422 and 500 are implied where they apply). */
  errors: readonly number[];
  /** Which request part an engine `validation` error points at. */
  engineValidationSource: ValidationSource;
  handler(
    input: AdminHandlerInput<
      P extends z.ZodObject ? z.output<P> : Record<string, never>,
      Q extends z.ZodObject ? z.output<Q> : Record<string, never>,
      B extends z.ZodType ? (R extends true ? z.output<B> : z.output<B> | undefined) : undefined
    >,
    context: AdminRouteContext,
  ): Promise<AdminResult>;
}

/** A route of the table with its types erased. */
export interface AdminRoute {
  method: 'GET' | 'POST';
  path: string;
  operationId: string;
  summary: string;
  description: string;
  tags: string[];
  access: RouteAccess;
  mutation: boolean;
  params: z.ZodObject | undefined;
  query: z.ZodObject | undefined;
  body: RouteBody | undefined;
  response: z.ZodType;
  errors: readonly number[];
  engineValidationSource: ValidationSource;
  handler(input: AdminHandlerInput<any, any, any>, context: AdminRouteContext): Promise<AdminResult>;
}

/**
 * Declares a route with its handler typed from its schemas.
 *
 * @example
 * ```ts
 * const route = defineRoute({ method: 'GET', path: '/provisioning/workflows/{workflow_id}', params: WorkflowPathSchema, …,
 *   handler: async ({ params }, { engine }) => ok(await engine.get(params.workflow_id), 'req_1') });
 * ```
 */
export function defineRoute<
  P extends z.ZodObject | undefined,
  Q extends z.ZodObject | undefined,
  B extends z.ZodType | undefined,
  R extends boolean = false,
>(definition: AdminRouteDefinition<P, Q, B, R>): AdminRoute {
  return definition as unknown as AdminRoute;
}
