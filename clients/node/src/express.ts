// Express middleware (Express 4 and 5; any node:http server too) that records one audit
// event per request: actor, target, outcome from the status, and the request's context.
// It never imports Express: the request and response are typed by what it reads.

import type { IncomingMessage, ServerResponse } from 'node:http';

import type { AuditSink } from './api.js';
import { assertAction, cleanMetadata } from './clean.js';
import { currentAudit, runWithAudit, type AuditScope } from './context.js';
import type { Actor, AuditEvent, Outcome, RequestContext, Target } from './event.js';
import { holdResponse } from './hold.js';
import {
  ANONYMOUS,
  cleanIp,
  cleanUserAgent,
  field,
  requestIdOf,
  targetOf,
  toCleanActor,
  toCleanTarget,
} from './request.js';
import { warnOnce } from './warn.js';

/** The request the middleware takes: node's, plus Express's `ip`. Nothing else is
 * declared, so that Express infers its route handlers' types from the route, not from this. */
export interface AuditRequest extends IncomingMessage {
  /** Express's client address, which its `trust proxy` setting governs. */
  ip?: string | undefined;
}

/** The request as the option functions see it by default: what Express (`params`,
 * `body`) and an authentication middleware (`user`) add. Give `auditMiddleware` a type
 * argument (`auditMiddleware<express.Request>(...)`) to see your own. */
export interface AuditRequestView extends AuditRequest {
  params?: Record<string, string | undefined>;
  body?: unknown;
  /** The signed-in user: an id, or an object with `id` (or `sub`), `type`, `name`. */
  user?: unknown;
}

/** The response the middleware takes: node's, plus Express's `json` (typed loosely, as
 * for the request). */
export interface AuditResponse extends ServerResponse {
  json?: unknown;
}

/** A `(req, res, next)` handler. */
export type AuditHandler = (req: AuditRequest, res: AuditResponse, next: (error?: unknown) => void) => void;

/** Where a request's target comes from: `fromParam`, `fromBody`, `fromResponse`, or a
 * function of the request, the response and the JSON body sent with `res.json()`. */
export type TargetSource<Req extends AuditRequest = AuditRequestView, Res extends AuditResponse = AuditResponse> = (
  req: Req,
  res: Res,
  body: unknown,
) => Target | undefined;

/** The middleware's settings. */
export interface AuditMiddlewareOptions<Req extends AuditRequest = AuditRequestView, Res extends AuditResponse = AuditResponse> {
  /** The action recorded, like `project.created`. */
  action: string;
  target?: TargetSource<Req, Res>;
  /** The actor; by default `req.user`, then the enclosing `auditContext`'s, then anonymous. */
  actor?: (req: Req) => Actor | string | undefined;
  /** Details to record; cleaned to what the server takes. */
  metadata?: (req: Req, res: Res, body: unknown) => Record<string, unknown> | undefined;
  /** Record the event before the response goes out, and answer 503 if it cannot be
   * recorded. By default the event is recorded after the response, in the background,
   * and a failure to record it never affects the request. */
  failClosed?: boolean;
}

/** The target `{ type, id: req.params[name] }`. */
export function fromParam<Req extends AuditRequest = AuditRequestView, Res extends AuditResponse = AuditResponse>(
  name: string,
  type: string,
): TargetSource<Req, Res> {
  return (req) => targetOf(type, field(field(req, 'params'), name));
}

/** The target `{ type, id: req.body[name] }` (a parsed JSON or form body). */
export function fromBody<Req extends AuditRequest = AuditRequestView, Res extends AuditResponse = AuditResponse>(
  name: string,
  type: string,
): TargetSource<Req, Res> {
  return (req) => targetOf(type, field(field(req, 'body'), name));
}

/** The target `{ type, id: body[name] }` of the JSON body the handler sent with `res.json()`. */
export function fromResponse<Req extends AuditRequest = AuditRequestView, Res extends AuditResponse = AuditResponse>(
  name: string,
  type: string,
): TargetSource<Req, Res> {
  return (_req, _res, body) => targetOf(type, field(body, name));
}

const contexts = new WeakMap<IncomingMessage, RequestContext>();

/** The request's context, the same for every audit middleware on it; the request id is
 * the client's `x-request-id` if usable, else a new one, echoed in the response. */
function contextOf(req: AuditRequest, res: ServerResponse): RequestContext {
  const known = contexts.get(req);
  if (known !== undefined) return known;
  const context: RequestContext = { requestId: requestIdOf(req.headers['x-request-id']) };
  const ip = cleanIp(req.ip ?? req.socket?.remoteAddress);
  if (ip !== undefined) context.ipAddress = ip;
  const agent = cleanUserAgent(req.headers['user-agent']);
  if (agent !== undefined) context.userAgent = agent;
  contexts.set(req, context);
  if (!res.headersSent && context.requestId !== undefined) res.setHeader('x-request-id', context.requestId);
  return context;
}

/** A request's scope; the actor is resolved when read, so that it sees a `req.user` set
 * by an authentication middleware that runs after this one. */
class RequestScope implements AuditScope {
  constructor(
    private readonly resolve: () => Actor | undefined,
    readonly context: RequestContext,
  ) {}

  get actor(): Actor {
    try {
      return this.resolve() ?? ANONYMOUS;
    } catch {
      return ANONYMOUS;
    }
  }
}

function scopeOf<Req extends AuditRequest>(
  req: AuditRequest,
  res: ServerResponse,
  actor: ((req: Req) => Actor | string | undefined) | undefined,
): RequestScope {
  const outer = currentAudit();
  // The request is what the caller said it is (`Req`): the middleware cannot check it.
  const resolve = (): Actor | undefined =>
    toCleanActor(actor?.(req as Req)) ?? toCleanActor(field(req, 'user')) ?? outer?.actor;
  return new RequestScope(resolve, contextOf(req, res));
}

/** Middleware that records nothing but runs the rest of the request in its audit scope
 * (actor, ip, user agent, request id), for the `Audited` decorator and direct calls. */
export function auditContext<Req extends AuditRequest = AuditRequestView>(
  options: Pick<AuditMiddlewareOptions<Req>, 'actor'> = {},
): AuditHandler {
  return (req, res, next) => {
    let scope: RequestScope;
    try {
      scope = scopeOf(req, res, options.actor);
    } catch (error) {
      warnOnce('AUDIT_MIDDLEWARE', 'audit-service: the audit scope of a request could not be set', error);
      next();
      return;
    }
    runWithAudit(scope, () => next());
  };
}

/** Middleware that records `options.action` for each request it handles: 2xx is
 * `SUCCESS`, 401 and 403 `DENIED`, anything else `FAILURE` with reason `HTTP <status>`. The
 * rest of the request runs in its audit scope (see `auditContext`). Hostile input is
 * cleaned, never refused, and the middleware never throws into the host. */
export function auditMiddleware<Req extends AuditRequest = AuditRequestView, Res extends AuditResponse = AuditResponse>(
  audit: AuditSink,
  options: AuditMiddlewareOptions<Req, Res>,
): AuditHandler {
  assertAction(options.action, 'auditMiddleware');
  return (req, res, next) => {
    let scope: RequestScope;
    try {
      scope = scopeOf(req, res, options.actor);
      const body = captureJson(res);
      const event = (status: number, closed: boolean): AuditEvent =>
        eventOf(options, req as Req, res as Res, scope, status, body(), closed);
      if (options.failClosed === true) {
        holdResponse(res, (status) => audit.send(event(status, false)), ['x-request-id']);
      } else {
        recordOnFinish(res, audit, event);
      }
    } catch (error) {
      warnOnce('AUDIT_MIDDLEWARE', 'audit-service: a request could not be audited', error);
      next();
      return;
    }
    runWithAudit(scope, () => next());
  };
}

/** Patches `res.json` to keep the body it sends; returns what reads it. */
function captureJson(res: AuditResponse): () => unknown {
  let body: unknown;
  const json: unknown = res.json;
  if (typeof json === 'function') {
    const capture = function (this: unknown, ...args: unknown[]): unknown {
      // Express 4 still takes the deprecated `res.json(status, body)` and `(body, status)`.
      body = args.length >= 2 && typeof args[0] === 'number' ? args[1] : args[0];
      return Reflect.apply(json, this, args);
    };
    Object.defineProperty(res, 'json', { value: capture, writable: true, configurable: true });
  }
  return () => body;
}

function recordOnFinish(
  res: ServerResponse,
  audit: AuditSink,
  event: (status: number, closed: boolean) => AuditEvent,
): void {
  let recorded = false;
  const record = (closed: boolean): void => {
    if (recorded) return;
    recorded = true;
    Promise.resolve()
      .then(() => audit.enqueue(event(res.statusCode, closed)))
      .catch((error: unknown) => {
        warnOnce('AUDIT_NOT_ENQUEUED', 'audit-service: a request\'s event could not be recorded', error);
      });
  };
  res.once('finish', () => record(false));
  res.once('close', () => record(!res.writableFinished));
}

function eventOf<Req extends AuditRequest, Res extends AuditResponse>(
  options: AuditMiddlewareOptions<Req, Res>,
  req: Req,
  res: Res,
  scope: RequestScope,
  status: number,
  body: unknown,
  closed: boolean,
): AuditEvent {
  const event: AuditEvent = { action: options.action, actor: scope.actor, context: scope.context };
  const [outcome, reason] = closed
    ? (['FAILURE', `connection closed before the response was complete (HTTP ${status})`] as const)
    : outcomeOf(status);
  event.outcome = outcome;
  if (reason !== undefined) event.reason = reason;
  const target = attempt(() => options.target?.(req, res, body));
  const cleaned = toCleanTarget(target);
  if (cleaned !== undefined) event.target = cleaned;
  if (options.metadata !== undefined) {
    const metadata = attempt(() => options.metadata?.(req, res, body));
    if (metadata !== undefined) event.metadata = cleanMetadata(metadata);
  }
  return event;
}

/** The outcome of an HTTP status, and its reason unless it is a success. */
export function outcomeOf(status: number): readonly [Outcome, string | undefined] {
  if (status >= 200 && status < 300) return ['SUCCESS', undefined];
  if (status === 401 || status === 403) return ['DENIED', `HTTP ${status}`];
  return ['FAILURE', `HTTP ${status}`];
}

function attempt<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (error) {
    warnOnce('AUDIT_HOOK', 'audit-service: an audit target or metadata function threw', error);
    return undefined;
  }
}
