// An Apollo Server (4 and 5) plugin that records an event for each listed root field of a
// query or mutation: the outcome from the resolver, the target from its result, and the
// arguments (secrets redacted) as metadata. Only Apollo's types are imported.

import type { ApolloServerPlugin, BaseContext, GraphQLRequestListener } from '@apollo/server';

import type { AuditSink } from './api.js';
import { assertAction, cleanMetadata } from './clean.js';
import { currentAudit } from './context.js';
import type { Actor, AuditEvent, RequestContext, Target } from './event.js';
import {
  ANONYMOUS,
  cleanIp,
  cleanUserAgent,
  field,
  reasonOf,
  requestIdOf,
  targetOf,
  toCleanActor,
  toCleanTarget,
} from './request.js';
import { warnOnce } from './warn.js';

/** How one root field is recorded. */
export interface AuditedOperation {
  action: string;
  /** The target, from the field's arguments (variables filled in) and what its resolver
   * returned (`undefined` when it failed): `fromArg`, `fromResult`, or a function, whose
   * parameters may be annotated (`(args: { id: string }, result?: Project) => ...`). */
  target?(args: Record<string, unknown>, result: unknown): Target | undefined;
}

/** The target `{ type, id: args[name] }`. */
export function fromArg(name: string, type: string): NonNullable<AuditedOperation['target']> {
  return (args) => targetOf(type, field(args, name));
}

/** The target `{ type, id: result[name] }` of what the resolver returned. */
export function fromResult(name: string, type: string): NonNullable<AuditedOperation['target']> {
  return (_args, result) => targetOf(type, field(result, name));
}

/** The plugin's settings. */
export interface AuditPluginOptions<TContext extends BaseContext = BaseContext> {
  /** The root fields recorded, by field name (never by alias). */
  operations: Record<string, AuditedOperation>;
  /** Argument names redacted at any depth besides those matching /password|secret|token/i
   * (compared case-insensitively). */
  secrets?: string[];
  /** The actor; by default `contextValue.actor`, then `contextValue.user`, then the
   * current audit scope's (an Express `auditContext`), then anonymous. */
  actor?: (contextValue: TContext) => Actor | string | undefined;
  /** The request's context; by default the current audit scope's, else what the HTTP
   * request's headers and `contextValue.ip` (or `contextValue.req`) tell. */
  context?: (contextValue: TContext) => RequestContext | undefined;
}

// Names that hold credentials: `password`, `secret`, `token` as the issue names them, and the
// other usual ones (`apiKey`, `privateKey`, `passphrase`, `pwd`, `otp`, `authorization`,
// `cookie`, `credential`).
const SECRET = /pass(word|phrase)|secret|token|api_?key|access_?key|private_?key|^pwd$|^otp$|authori[sz]ation|cookie|credential/i;

/** The plugin: `new ApolloServer({ plugins: [auditPlugin(client, { operations })] })`.
 * Events are recorded in the background (`enqueue`) and never affect the response. */
export function auditPlugin<TContext extends BaseContext = BaseContext>(
  audit: AuditSink,
  options: AuditPluginOptions<TContext>,
): ApolloServerPlugin<TContext> {
  const operations = new Map<string, AuditedOperation>();
  for (const [field, operation] of Object.entries(options.operations)) {
    assertAction(operation.action, `auditPlugin (${field})`);
    operations.set(field, operation);
  }
  const secrets = new Set((options.secrets ?? []).map((name) => name.toLowerCase()));
  const redact = (key: string): boolean => SECRET.test(key) || secrets.has(key.toLowerCase());

  return {
    async requestDidStart(requestContext): Promise<GraphQLRequestListener<TContext>> {
      const scope = currentAudit();
      const headers = requestContext.request.http?.headers;
      let context: RequestContext | undefined;
      const contextOf = (contextValue: TContext): RequestContext => {
        context ??= safe(() => options.context?.(contextValue)) ?? scope?.context ?? fromHttp(headers, contextValue);
        return context;
      };
      const requestId = scope?.context?.requestId ?? requestIdOf(headers?.get('x-request-id'));
      safe(() => requestContext.response.http.headers.set('x-request-id', requestId));
      const actorOf = (contextValue: TContext): Actor =>
        toCleanActor(safe(() => options.actor?.(contextValue))) ??
        toCleanActor(field(contextValue, 'actor')) ??
        toCleanActor(field(contextValue, 'user')) ??
        scope?.actor ??
        ANONYMOUS;

      return {
        async executionDidStart() {
          return {
            willResolveField({ info, args, contextValue }) {
              if (info.path.prev !== undefined) return;
              const kind = info.operation.operation;
              if (kind !== 'query' && kind !== 'mutation') return;
              const operation = operations.get(info.fieldName);
              if (operation === undefined) return;
              const fieldName = info.fieldName;
              return (error: Error | null, result?: unknown): void => {
                try {
                  const event: AuditEvent = {
                    action: operation.action,
                    actor: actorOf(contextValue),
                    context: { requestId, ...contextOf(contextValue) },
                    outcome: error === null ? 'SUCCESS' : 'FAILURE',
                    metadata: cleanMetadata({ operation: fieldName, arguments: args }, { redact }),
                  };
                  if (error !== null) event.reason = reasonOf(error);
                  const target = toCleanTarget(safe(() => operation.target?.(args, error === null ? result : undefined)));
                  if (target !== undefined) event.target = target;
                  Promise.resolve(audit.enqueue(event)).catch((reason: unknown) => {
                    warnOnce('AUDIT_NOT_ENQUEUED', `audit-service: a "${operation.action}" event could not be recorded`, reason);
                  });
                } catch (reason) {
                  warnOnce('AUDIT_NOT_ENQUEUED', `audit-service: a "${operation.action}" event could not be recorded`, reason);
                }
              };
            },
          };
        },
      };
    },
  };
}

/** A context from the HTTP request: the user agent and request id from its headers, the
 * address from `contextValue.ip` or `contextValue.req` (never from X-Forwarded-For, which
 * anyone can send: put a trusted address in the context). */
function fromHttp(headers: { get(name: string): string | undefined } | undefined, contextValue: unknown): RequestContext {
  const context: RequestContext = {};
  const agent = cleanUserAgent(headers?.get('user-agent'));
  if (agent !== undefined) context.userAgent = agent;
  const req = field(contextValue, 'req');
  const ip =
    cleanIp(field(contextValue, 'ip')) ??
    cleanIp(field(req, 'ip')) ??
    cleanIp(field(field(req, 'socket'), 'remoteAddress'));
  if (ip !== undefined) context.ipAddress = ip;
  return context;
}

function safe<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (error) {
    warnOnce('AUDIT_HOOK', 'audit-service: an audit plugin function threw', error);
    return undefined;
  }
}
