/**
 * Matches a request path (relative to the prefix) against the route table's
 * `{param}` patterns, telling "no such path" (404) from "no such method" (405).
 *
 * @module
 */

/** Result of {@link matchRoute}. */
export type RouteMatch<R> =
  | { kind: 'found'; route: R; params: Record<string, string>; undecodable: string[] }
  | { kind: 'method_not_allowed'; allow: string[] }
  | { kind: 'not_found' };

type Segment = { literal: string } | { param: string };

/** A route pattern split into segments, ready for {@link matchRoute}. */
export interface CompiledRoute<R> {
  route: R;
  method: string;
  segments: Segment[];
}

/**
 * Compiles `{ method, path }` routes whose paths look like
 * `/admin/provisioning/workflows/{workflow_id}`.
 */
export function compileRoutes<R extends { method: string; path: string }>(routes: readonly R[]): CompiledRoute<R>[] {
  return routes.map((route) => ({
    route,
    method: route.method,
    segments: route.path
      .split('/')
      .slice(1)
      .map((part) => (part.startsWith('{') && part.endsWith('}') ? { param: part.slice(1, -1) } : { literal: part })),
  }));
}

/**
 * Finds the route for `method` and `path`. Path parameters are
 * percent-decoded; a parameter that does not decode is listed in `undecodable`
 * (a 422, not a 404). A single trailing slash is ignored.
 *
 * @example
 * ```ts
 * matchRoute(compiled, 'GET', '/provisioning/workflows/wf_1')
 * // { kind: 'found', route, params: { workflow_id: 'wf_1' }, undecodable: [] }
 * ```
 */
export function matchRoute<R>(compiled: readonly CompiledRoute<R>[], method: string, path: string): RouteMatch<R> {
  const trimmed = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
  if (!trimmed.startsWith('/')) return { kind: 'not_found' };
  const parts = trimmed.split('/').slice(1);
  const allow: string[] = [];
  for (const candidate of compiled) {
    const params = matchSegments(candidate.segments, parts);
    if (!params) continue;
    if (candidate.method !== method) {
      if (!allow.includes(candidate.method)) allow.push(candidate.method);
      continue;
    }
    const decoded: Record<string, string> = {};
    const undecodable: string[] = [];
    for (const [name, raw] of Object.entries(params)) {
      try {
        decoded[name] = decodeURIComponent(raw);
      } catch {
        decoded[name] = raw;
        undecodable.push(name);
      }
    }
    return { kind: 'found', route: candidate.route, params: decoded, undecodable };
  }
  return allow.length > 0 ? { kind: 'method_not_allowed', allow } : { kind: 'not_found' };
}

function matchSegments(segments: readonly Segment[], parts: readonly string[]): Record<string, string> | null {
  if (segments.length !== parts.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    const part = parts[i]!;
    if ('literal' in segment) {
      if (segment.literal !== part) return null;
    } else {
      params[segment.param] = part;
    }
  }
  return params;
}
