import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import { expect } from 'vitest';
import { buildOpenApiDocument } from '../../src/admin/admin-openapi.js';
import { ADMIN_ROUTES } from '../../src/admin/admin-routes.js';
import type { HttpExchange } from '../../src/testing/http-contract.js';

const addFormats = addFormatsModule as unknown as (ajv: Ajv2020) => Ajv2020;

type Doc = { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }>> };

/**
 * Returns an `onExchange` hook that checks every response body against the
 * schema the OpenAPI document (for `prefix`) declares for its route and status.
 */
export function openApiResponseChecker(prefix = '/api/v1'): { check: (exchange: HttpExchange) => void; checked: () => number } {
  const doc = buildOpenApiDocument(ADMIN_ROUTES, { prefix }) as unknown as Doc;
  const ajv = new Ajv2020({ strict: false, allErrors: true, validateSchema: false });
  addFormats(ajv);
  ajv.addSchema(doc, 'openapi.json');
  const templates = Object.keys(doc.paths).map((template) => ({
    template,
    pattern: new RegExp(`^${template.replace(/[.]/g, '\\.').replace(/\{[^}]+\}/g, '[^/]*')}/?$`),
  }));
  const pointer = (...parts: string[]) => parts.map((p) => p.replace(/~/g, '~0').replace(/\//g, '~1')).join('/');
  let count = 0;
  return {
    checked: () => count,
    check(exchange) {
      const match = templates.find((t) => t.pattern.test(exchange.path));
      if (!match) {
        // No route: a 404 from whoever owns the path.
        expect(exchange.status).toBe(404);
        return;
      }
      const operations = doc.paths[match.template]!;
      const operation = operations[exchange.method.toLowerCase()];
      let ref: string;
      if (!operation) {
        expect(exchange.status).toBe(405);
        ref = 'openapi.json#/components/schemas/ErrorResponse';
      } else {
        const response = operation.responses[String(exchange.status)];
        expect(response, `${exchange.method} ${match.template} answered an undocumented ${exchange.status}`).toBeDefined();
        ref = `openapi.json#/${pointer('paths', match.template, exchange.method.toLowerCase(), 'responses', String(exchange.status), 'content', 'application/json', 'schema')}`;
      }
      const validate = ajv.getSchema(ref) ?? ajv.compile({ $ref: ref });
      const valid = validate(exchange.body);
      expect(valid, `${exchange.method} ${exchange.path} ${exchange.status}: ${JSON.stringify(validate.errors)}\n${JSON.stringify(exchange.body).slice(0, 500)}`).toBe(true);
      count++;
    },
  };
}
