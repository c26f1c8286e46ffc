/**
 * Generates the OpenAPI 3.1 document of the admin and tenant API from the
 * route table and the zod schemas the handlers validate with (`z.toJSONSchema`,
 * JSON Schema 2020-12, which OpenAPI 3.1 uses as is). Nothing here is written
 * by hand but the prose.
 *
 * @module
 */
import { z } from 'zod';
import type { AdminRoute } from './admin-route-types.js';
import {
  AdminActionBodySchema,
  CallbackAcceptedEnvelopeSchema,
  CallbackBodySchema,
  ErrorResponseSchema,
  HistoryEntryResponseSchema,
  HttpValidationErrorSchema,
  ListMetaSchema,
  ResponseMetaSchema,
  StepResponseSchema,
  StepStatusSchema,
  TimestampSchema,
  ValidationErrorItemSchema,
  WorkflowDetailEnvelopeSchema,
  WorkflowDetailResponseSchema,
  WorkflowErrorSchema,
  WorkflowListEnvelopeSchema,
  WorkflowResponseSchema,
  WorkflowStatusSchema,
} from './admin-schemas.js';

type JsonSchema = Record<string, unknown>;

/** Response components (`io: 'output'`), by component name. */
const RESPONSE_COMPONENTS: Record<string, z.ZodType> = {
  Timestamp: TimestampSchema,
  WorkflowStatus: WorkflowStatusSchema,
  StepStatus: StepStatusSchema,
  WorkflowError: WorkflowErrorSchema,
  StepResponse: StepResponseSchema,
  HistoryEntryResponse: HistoryEntryResponseSchema,
  WorkflowResponse: WorkflowResponseSchema,
  WorkflowDetailResponse: WorkflowDetailResponseSchema,
  ResponseMeta: ResponseMetaSchema,
  ListMeta: ListMetaSchema,
  WorkflowListEnvelope: WorkflowListEnvelopeSchema,
  WorkflowDetailEnvelope: WorkflowDetailEnvelopeSchema,
  CallbackAcceptedEnvelope: CallbackAcceptedEnvelopeSchema,
  ErrorResponse: ErrorResponseSchema,
  ValidationErrorItem: ValidationErrorItemSchema,
  HTTPValidationError: HttpValidationErrorSchema,
};

/** Request body components (`io: 'input'`), by component name. */
const REQUEST_COMPONENTS: Record<string, z.ZodType> = {
  AdminActionRequest: AdminActionBodySchema,
  CallbackRequest: CallbackBodySchema,
};

const STATUS_TEXT: Record<number, string> = {
  401: 'No principal: `authenticate` returned null.',
  403: 'The principal may not use this route (not an admin, no tenant, or the API is read-only).',
  404: 'Not found.',
  409: 'The operation is not allowed from the current status; the message names it.',
  413: 'The body is over 64 KiB.',
  415: 'The body is not `application/json`.',
  422: 'A path, query or body value is invalid (FastAPI\'s shape).',
  500: 'Unexpected error; the message is generic and the cause is logged.',
};

/** Options of {@link buildOpenApiDocument}. */
export interface OpenApiDocumentOptions {
  /** Prefix of every path, e.g. `/api/v1`. */
  prefix: string;
  /** @default 'sagaline provisioning API' */
  title?: string;
  /** @default '1.0.0' */
  version?: string;
}

function withoutDialect(schema: JsonSchema): JsonSchema {
  const { $schema: _dialect, $id: _id, ...rest } = schema;
  return rest;
}

function componentsOf(components: Record<string, z.ZodType>, io: 'input' | 'output'): { schemas: Record<string, JsonSchema>; ids: Map<z.ZodType, string> } {
  const registry = z.registry<{ id: string }>();
  const ids = new Map<z.ZodType, string>();
  for (const [id, schema] of Object.entries(components)) {
    registry.add(schema, { id });
    ids.set(schema, id);
  }
  const generated = z.toJSONSchema(registry, { io, target: 'draft-2020-12', unrepresentable: 'any', uri: (id) => `#/components/schemas/${id}` });
  const schemas: Record<string, JsonSchema> = {};
  for (const [id, schema] of Object.entries(generated.schemas)) schemas[id] = withoutDialect(schema as JsonSchema);
  return { schemas, ids };
}

let components: { schemas: Record<string, JsonSchema>; ids: Map<z.ZodType, string> } | undefined;

function allComponents(): { schemas: Record<string, JsonSchema>; ids: Map<z.ZodType, string> } {
  if (components) return components;
  const responses = componentsOf(RESPONSE_COMPONENTS, 'output');
  const requests = componentsOf(REQUEST_COMPONENTS, 'input');
  components = {
    schemas: { ...responses.schemas, ...requests.schemas },
    ids: new Map([...responses.ids, ...requests.ids]),
  };
  return components;
}

function schemaRef(schema: z.ZodType, io: 'input' | 'output'): JsonSchema {
  const id = allComponents().ids.get(schema);
  if (id !== undefined) return { $ref: `#/components/schemas/${id}` };
  return withoutDialect(z.toJSONSchema(schema, { io, target: 'draft-2020-12', unrepresentable: 'any' }) as JsonSchema);
}

function parametersOf(shape: z.ZodObject | undefined, location: 'path' | 'query'): JsonSchema[] {
  if (!shape) return [];
  return Object.entries(shape.shape).map(([name, field]) => {
    const fieldSchema = field as z.ZodType;
    const { description, ...schema } = withoutDialect(
      z.toJSONSchema(fieldSchema, { io: 'input', target: 'draft-2020-12', unrepresentable: 'any' }) as JsonSchema,
    );
    const parameter: JsonSchema = {
      name,
      in: location,
      required: location === 'path' || !fieldSchema.safeParse(undefined).success,
      schema,
    };
    if (typeof description === 'string') parameter.description = description;
    return parameter;
  });
}

function jsonContent(schema: JsonSchema): JsonSchema {
  return { 'application/json': { schema } };
}

function errorResponse(status: number): JsonSchema {
  const schema = status === 422 ? { $ref: '#/components/schemas/HTTPValidationError' } : { $ref: '#/components/schemas/ErrorResponse' };
  return { description: STATUS_TEXT[status] ?? 'Error.', headers: { 'X-Request-Id': { $ref: '#/components/headers/RequestId' } }, content: jsonContent(schema) };
}

function operationOf(route: AdminRoute): JsonSchema {
  const operation: JsonSchema = {
    operationId: route.operationId,
    summary: route.summary,
    description: route.description,
    tags: route.tags,
    parameters: [{ $ref: '#/components/parameters/RequestId' }, ...parametersOf(route.params, 'path'), ...parametersOf(route.query, 'query')],
  };
  if (route.access === 'public') operation.security = [];
  if (route.body) {
    operation.requestBody = { required: route.body.required, content: jsonContent(schemaRef(route.body.schema, 'input')) };
  }
  const responses: JsonSchema = {
    '200': {
      description: 'OK',
      headers: { 'X-Request-Id': { $ref: '#/components/headers/RequestId' } },
      content: jsonContent(schemaRef(route.response, 'output')),
    },
  };
  const statuses = new Set<number>(route.errors);
  if (route.params || route.query || route.body) statuses.add(422);
  statuses.add(500);
  for (const status of [...statuses].sort((a, b) => a - b)) responses[String(status)] = errorResponse(status);
  operation.responses = responses;
  return operation;
}

/**
 * Builds the OpenAPI 3.1 document for `routes` mounted at `prefix`.
 *
 * @example
 * ```ts
 * const doc = buildOpenApiDocument(ADMIN_ROUTES, { prefix: '/api/v1' });
 * Object.keys(doc.paths as object); // ['/api/v1/admin/provisioning/workflows', …]
 * ```
 */
export function buildOpenApiDocument(routes: readonly AdminRoute[], options: OpenApiDocumentOptions): Record<string, unknown> {
  const paths: Record<string, Record<string, JsonSchema>> = {};
  for (const route of routes) {
    const path = `${options.prefix}${route.path}`;
    (paths[path] ??= {})[route.method.toLowerCase()] = operationOf(route);
  }
  return {
    openapi: '3.1.0',
    jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
    info: {
      title: options.title ?? 'sagaline provisioning API',
      version: options.version ?? '1.0.0',
      description:
        'Admin and tenant routes over durable provisioning workflows. Authentication is the host\'s: admin routes need an admin ' +
        'principal, tenant routes a principal with a tenant; the callback is authorized by its token. Wire fields are snake_case, ' +
        'times ISO 8601 UTC; secret-looking output fields are redacted.',
    },
    tags: [
      { name: 'admin', description: 'Operator routes, across tenants.' },
      { name: 'tenant', description: 'Routes scoped to the principal\'s tenant, and the callback.' },
      { name: 'meta', description: 'This document.' },
    ],
    paths,
    components: {
      schemas: allComponents().schemas,
      parameters: {
        RequestId: {
          name: 'X-Request-Id',
          in: 'header',
          required: false,
          description: 'Echoed as `meta.request_id` / `error.request_id` when it is 1-128 of `A-Z a-z 0-9 . _ -`; otherwise one is generated.',
          schema: { type: 'string', maxLength: 128 },
        },
      },
      headers: {
        RequestId: { description: 'The request id of this response.', schema: { type: 'string' } },
      },
    },
  };
}
