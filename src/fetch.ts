/**
 * The admin and tenant HTTP API as a fetch handler: `(request: Request) =>
 * Promise<Response>`, for any runtime with the Fetch API (Node 20+, Bun, Deno,
 * workers). The Hono, Express and Fastify bindings wrap it.
 *
 * @example
 * ```ts
 * import { createAdminHandler } from 'sagaline/fetch';
 *
 * const handler = createAdminHandler(engine, {
 *   authenticate: async (request) => verifyToken(request.headers.get('authorization')),
 * });
 * Bun.serve({ fetch: handler });
 * ```
 *
 * @module
 */
export { createAdminHandler, normalizePrefix } from './http/fetch/fetch-admin-handler.js';
export type { AdminFetchHandler } from './http/fetch/fetch-admin-handler.js';
export { DEFAULT_MAX_BODY_BYTES, DEFAULT_PREFIX } from './http/fetch/admin-handler-config.js';
export type { AdminHandlerOptions } from './http/fetch/admin-handler-config.js';
export { ADMIN_SCOPE, defaultActorOf, defaultIsAdmin, defaultTenantOf } from './admin/admin-config.js';
export type { AdminApiOptions, AdminPrincipal, RedactFunction, RedactLocation } from './admin/admin-config.js';
export { REDACTED, isSecretKey, redactSecrets } from './admin/admin-redaction.js';
export { createAdminApi, isJsonContentType, matchesAdminRoute } from './admin/admin-api.js';
export type { AdminApi, AdminDispatchRequest, BodyRead, CreateAdminApiOptions } from './admin/admin-api.js';
export { ADMIN_ROUTES } from './admin/admin-routes.js';
export type { AdminHandlerInput, AdminRoute, AdminRouteContext, RouteAccess } from './admin/admin-route-types.js';
export type { AdminResult } from './admin/admin-envelopes.js';
export { buildOpenApiDocument } from './admin/admin-openapi.js';
export type { OpenApiDocumentOptions } from './admin/admin-openapi.js';
export {
  AdminActionBodySchema,
  AdminListQuerySchema,
  CallbackBodySchema,
  ErrorResponseSchema,
  HttpValidationErrorSchema,
  StepResponseSchema,
  TenantListQuerySchema,
  WorkflowDetailResponseSchema,
  WorkflowResponseSchema,
} from './admin/admin-schemas.js';
export type {
  ErrorResponse,
  HistoryEntryResponse,
  StepResponse,
  ValidationErrorItem,
  WorkflowDetailResponse,
  WorkflowResponse,
} from './admin/admin-schemas.js';
export { toWorkflowDetailResponse, toWorkflowResponse } from './admin/admin-wire.js';
