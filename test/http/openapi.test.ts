import { Validator } from '@seriousme/openapi-schema-validator';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { buildOpenApiDocument } from '../../src/admin/admin-openapi.js';
import { ADMIN_ROUTES } from '../../src/admin/admin-routes.js';
import { CallbackBodySchema, WorkflowDetailResponseSchema } from '../../src/admin/admin-schemas.js';
import { createAdminHandler } from '../../src/fetch.js';

type Doc = {
  openapi: string;
  paths: Record<string, Record<string, { operationId: string; parameters: { name?: string; in?: string; required?: boolean }[]; responses: Record<string, unknown> }>>;
  components: { schemas: Record<string, Record<string, unknown>> };
};

describe('OpenAPI document', () => {
  for (const prefix of ['/api/v1', '', '/svc/admin']) {
    it(`is a valid OpenAPI 3.1 document (prefix "${prefix}")`, async () => {
      const validator = new Validator();
      const result = await validator.validate(buildOpenApiDocument(ADMIN_ROUTES, { prefix }) as never);
      expect(result.errors).toBeUndefined();
      expect(result.valid).toBe(true);
      expect(validator.version).toBe('3.1');
    });
  }

  it('is what the handler serves', async () => {
    const handler = createAdminHandler({} as never, { authenticate: () => null, prefix: '/ops' });
    const served = await (await handler(new Request('http://localhost/ops/openapi.json'))).json();
    expect(served).toEqual(buildOpenApiDocument(ADMIN_ROUTES, { prefix: '/ops' }));
  });

  it('describes every route of the table, each with an operation id and its error statuses', () => {
    const doc = buildOpenApiDocument(ADMIN_ROUTES, { prefix: '/api/v1' }) as unknown as Doc;
    const operations = Object.values(doc.paths).flatMap((methods) => Object.values(methods));
    expect(operations).toHaveLength(ADMIN_ROUTES.length);
    expect(new Set(operations.map((o) => o.operationId)).size).toBe(ADMIN_ROUTES.length);
    const rollback = doc.paths['/api/v1/admin/provisioning/workflows/{workflow_id}/rollback']!.post!;
    expect(Object.keys(rollback.responses)).toEqual(['200', '401', '403', '404', '409', '413', '415', '422', '500']);
    const list = doc.paths['/api/v1/admin/provisioning/workflows']!.get!;
    expect(list.parameters.filter((p) => p.in === 'query').map((p) => p.name)).toEqual([
      'status',
      'type',
      'service_slug',
      'created_after',
      'created_before',
      'limit',
      'cursor',
      'tenant_id',
    ]);
    expect(list.parameters.every((p) => p.in !== 'query' || p.required === false)).toBe(true);
  });

  it('takes its schemas from zod (z.toJSONSchema), not from hand-written JSON', () => {
    const doc = buildOpenApiDocument(ADMIN_ROUTES, { prefix: '/api/v1' }) as unknown as Doc;
    const detail = doc.components.schemas.WorkflowDetailResponse!;
    expect(Object.keys(detail.properties as object).sort()).toEqual(Object.keys(WorkflowDetailResponseSchema.shape).sort());
    const { $schema: _ignored, ...callback } = z.toJSONSchema(CallbackBodySchema, { io: 'input' }) as Record<string, unknown>;
    expect(doc.components.schemas.CallbackRequest).toEqual(callback);
  });
});
