/**
 * Turns zod issues and JSON body problems into FastAPI's 422 shape:
 * `{"detail": [{"loc": ["query", "limit"], "msg": "...", "type": "..."}]}`.
 * The `type` values follow pydantic's where one exists (`missing`,
 * `int_parsing`, `string_type`, `enum`, `less_than_equal`, `json_invalid`, …).
 *
 * @module
 */
import type { z } from 'zod';
import type { ValidationErrorItem } from './admin-schemas.js';

/** Which part of the request a 422 item points at. */
export type ValidationSource = 'path' | 'query' | 'body' | 'header';

/** Result of validating one part of a request. */
export type SectionResult<T> = { ok: true; value: T } | { ok: false; detail: ValidationErrorItem[] };

/** JSON bodies nested deeper than this are refused (a 64 KiB body can nest 32 768 levels). */
export const MAX_BODY_DEPTH = 32;

type Issue = z.core.$ZodIssue;

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let current: unknown = input;
  for (const key of path) {
    if (typeof current !== 'object' || current === null) return undefined;
    if (!Object.prototype.hasOwnProperty.call(current, key)) return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}

function locOf(source: ValidationSource, path: readonly PropertyKey[]): (string | number)[] {
  return [source, ...path.map((key) => (typeof key === 'number' ? key : String(key)))];
}

function quoteList(values: readonly unknown[]): string {
  const quoted = values.map((v) => (typeof v === 'string' ? `'${v}'` : String(v)));
  if (quoted.length <= 1) return quoted.join('');
  return `${quoted.slice(0, -1).join(', ')} or ${quoted[quoted.length - 1]}`;
}

function plural(n: number | bigint, word: string): string {
  return `${n} ${word}${Number(n) === 1 ? '' : 's'}`;
}

function describeIssue(issue: Issue, source: ValidationSource, input: unknown): { msg: string; type: string } {
  switch (issue.code) {
    case 'invalid_type': {
      if (valueAt(input, issue.path) === undefined) return { msg: 'Field required', type: 'missing' };
      switch (issue.expected) {
        case 'string':
          return { msg: 'Input should be a valid string', type: 'string_type' };
        case 'number':
        case 'int':
          return source === 'body'
            ? { msg: 'Input should be a valid number', type: 'float_type' }
            : { msg: 'Input should be a valid integer, unable to parse string as an integer', type: 'int_parsing' };
        case 'boolean':
          return { msg: 'Input should be a valid boolean', type: 'bool_type' };
        case 'array':
          return { msg: 'Input should be a valid list', type: 'list_type' };
        case 'object':
        case 'record':
          return issue.path.length === 0
            ? { msg: 'Input should be a valid dictionary or object to extract fields from', type: 'model_attributes_type' }
            : { msg: 'Input should be a valid dictionary', type: 'dict_type' };
        default:
          return { msg: issue.message, type: `${String(issue.expected)}_type` };
      }
    }
    case 'too_small':
      if (issue.origin === 'string') return { msg: `String should have at least ${plural(issue.minimum, 'character')}`, type: 'string_too_short' };
      if (issue.origin === 'array') return { msg: `List should have at least ${plural(issue.minimum, 'item')}`, type: 'too_short' };
      return issue.inclusive === false
        ? { msg: `Input should be greater than ${issue.minimum}`, type: 'greater_than' }
        : { msg: `Input should be greater than or equal to ${issue.minimum}`, type: 'greater_than_equal' };
    case 'too_big':
      if (issue.origin === 'string') return { msg: `String should have at most ${plural(issue.maximum, 'character')}`, type: 'string_too_long' };
      if (issue.origin === 'array') return { msg: `List should have at most ${plural(issue.maximum, 'item')}`, type: 'too_long' };
      return issue.inclusive === false
        ? { msg: `Input should be less than ${issue.maximum}`, type: 'less_than' }
        : { msg: `Input should be less than or equal to ${issue.maximum}`, type: 'less_than_equal' };
    case 'invalid_value':
      return issue.values.length === 1
        ? { msg: `Input should be ${quoteList(issue.values)}`, type: 'literal_error' }
        : { msg: `Input should be ${quoteList(issue.values)}`, type: 'enum' };
    case 'invalid_format':
      if (issue.format === 'datetime') return { msg: 'Input should be a valid ISO 8601 datetime with a timezone (Z or ±hh:mm)', type: 'datetime_parsing' };
      if (issue.format === 'regex') return { msg: `String should match pattern '${(issue as { pattern?: string }).pattern ?? ''}'`, type: 'string_pattern_mismatch' };
      return { msg: issue.message, type: 'value_error' };
    case 'invalid_union':
      return { msg: 'Input does not match any of the allowed types', type: 'union_error' };
    case 'not_multiple_of':
      return { msg: `Input should be a multiple of ${issue.divisor}`, type: 'multiple_of' };
    default:
      return { msg: issue.message, type: 'value_error' };
  }
}

/**
 * Maps zod issues to 422 items. `input` is the value that was validated, used
 * to tell a missing field from a wrong one.
 *
 * @example
 * ```ts
 * const r = TenantListQuerySchema.safeParse({ limit: 'x' });
 * if (!r.success) zodIssuesToDetail('query', r.error.issues, { limit: 'x' });
 * // [{ loc: ['query', 'limit'], msg: 'Input should be a valid integer, …', type: 'int_parsing' }]
 * ```
 */
export function zodIssuesToDetail(source: ValidationSource, issues: readonly Issue[], input: unknown): ValidationErrorItem[] {
  const detail: ValidationErrorItem[] = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        detail.push({ loc: locOf(source, [...issue.path, key]), msg: 'Extra inputs are not permitted', type: 'extra_forbidden' });
      }
      continue;
    }
    detail.push({ loc: locOf(source, issue.path), ...describeIssue(issue, source, input) });
  }
  return detail;
}

/** Validates one part of a request, answering 422 items on failure. */
export function validateSection<S extends z.ZodType>(schema: S, source: ValidationSource, input: unknown): SectionResult<z.output<S>> {
  const result = schema.safeParse(input);
  if (result.success) return { ok: true, value: result.data };
  return { ok: false, detail: zodIssuesToDetail(source, result.error.issues, input) };
}

/**
 * Parses a JSON body. Refuses, as 422 items: text that is not JSON, nesting
 * deeper than {@link MAX_BODY_DEPTH}, and `__proto__` keys at any depth.
 *
 * @example
 * ```ts
 * parseJsonBody('{"reason": "stuck"}') // { ok: true, value: { reason: 'stuck' } }
 * parseJsonBody('{oops')               // { ok: false, detail: [{ loc: ['body'], msg: 'JSON decode error', type: 'json_invalid' }] }
 * ```
 */
export function parseJsonBody(text: string): SectionResult<unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, detail: [{ loc: ['body'], msg: 'JSON decode error', type: 'json_invalid' }] };
  }
  const detail: ValidationErrorItem[] = [];
  const stack: { value: unknown; path: (string | number)[] }[] = [{ value, path: [] }];
  while (stack.length > 0 && detail.length < 20) {
    const { value: current, path } = stack.pop()!;
    if (typeof current !== 'object' || current === null) continue;
    if (path.length >= MAX_BODY_DEPTH) {
      detail.push({ loc: ['body', ...path], msg: `Input should be nested at most ${MAX_BODY_DEPTH} levels deep`, type: 'too_deep' });
      break;
    }
    if (Array.isArray(current)) {
      current.forEach((item, index) => stack.push({ value: item, path: [...path, index] }));
      continue;
    }
    for (const key of Object.keys(current)) {
      if (key === '__proto__') {
        detail.push({ loc: ['body', ...path, key], msg: 'Key "__proto__" is not allowed', type: 'forbidden_key' });
        continue;
      }
      stack.push({ value: (current as Record<string, unknown>)[key], path: [...path, key] });
    }
  }
  return detail.length > 0 ? { ok: false, detail } : { ok: true, value };
}
