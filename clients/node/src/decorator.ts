// `@Audited(action, options)`: a method decorator that records an event each time the
// method returns (SUCCESS) or throws (FAILURE), for sync and async methods alike. It works
// both as a standard (TC39) decorator and under TypeScript's `experimentalDecorators`.

import type { AuditSink } from './api.js';
import { assertAction, cleanMetadata } from './clean.js';
import { currentAudit } from './context.js';
import { getDefaultClient } from './default.js';
import type { Actor, AuditEvent, Target } from './event.js';
import { reasonOf, toCleanActor, toCleanTarget } from './request.js';
import { warnOnce } from './warn.js';

/** The decorator's settings. `args` are the method's arguments; `result` its return (or
 * resolved) value, `undefined` when it threw. */
export interface AuditedOptions<Args extends unknown[] = unknown[], Result = unknown> {
  target?: (args: Args, result: Result | undefined) => Target | undefined;
  metadata?: (args: Args, result: Result | undefined) => Record<string, unknown> | undefined;
  /** The actor; by default the one of the current audit scope (the request's), else the
   * client's. */
  actor?: Actor | string;
  /** The client that records; by default `getDefaultClient()`. */
  client?: AuditSink | (() => AuditSink);
}

type Method<This, Args extends unknown[], Return> = (this: This, ...args: Args) => Return;

/** A method decorator of either kind. */
export interface AuditedDecorator {
  /** Standard ECMAScript decorator. */
  <This, Args extends unknown[], Return>(
    method: Method<This, Args, Return>,
    context: ClassMethodDecoratorContext<This, Method<This, Args, Return>>,
  ): Method<This, Args, Return>;
  /** TypeScript `experimentalDecorators`. */
  <T>(target: object, propertyKey: string | symbol, descriptor: TypedPropertyDescriptor<T>): TypedPropertyDescriptor<T>;
}

/** Records `action` each time the decorated method runs: `SUCCESS` when it returns or its
 * promise resolves, `FAILURE` (reason: the error's message) when it throws or rejects. The
 * result and the error pass through unchanged; the event is recorded in the background
 * (`enqueue`), and recording never affects the method. */
// Args and Result are the hooks' parameter types: annotate them (`([id]: [string]) => ...`)
// to have them checked; left to their defaults, anything goes.
export function Audited<Args extends unknown[] = never[], Result = never>(
  action: string,
  options: AuditedOptions<Args, Result> = {},
): AuditedDecorator {
  assertAction(action, 'Audited');
  const settings = options as unknown as AuditedOptions;

  function decorate(method: unknown, context: unknown, descriptor?: unknown): unknown {
    if (isDescriptor(descriptor)) {
      const value: unknown = descriptor.value;
      if (typeof value !== 'function') throw new TypeError('@Audited applies to methods only');
      descriptor.value = wrap(value, action, settings);
      return descriptor;
    }
    if (typeof method === 'function' && isMethodContext(context)) {
      return wrap(method, action, settings);
    }
    throw new TypeError('@Audited applies to methods only');
  }
  return decorate as AuditedDecorator;
}

function isDescriptor(value: unknown): value is PropertyDescriptor {
  return typeof value === 'object' && value !== null;
}

function isMethodContext(value: unknown): boolean {
  return typeof value === 'object' && value !== null && (value as { kind?: unknown }).kind === 'method';
}

// eslint-disable-next-line @typescript-eslint/no-unsafe-function-type
function wrap(method: Function, action: string, options: AuditedOptions): (...args: unknown[]) => unknown {
  const audited = function (this: unknown, ...args: unknown[]): unknown {
    let result: unknown;
    try {
      result = Reflect.apply(method, this, args);
    } catch (error) {
      record(action, options, args, undefined, error, true);
      throw error;
    }
    // Only real promises: calling `then` on another thenable (a lazy query builder) could
    // run it. The caller gets a promise settled as the method's was, with the same value or
    // error, and so still an unhandled rejection when it ignores a failure.
    if (result instanceof Promise) {
      return result.then(
        (value: unknown) => {
          record(action, options, args, value, undefined, false);
          return value;
        },
        (error: unknown) => {
          record(action, options, args, undefined, error, true);
          throw error;
        },
      );
    }
    record(action, options, args, result, undefined, false);
    return result;
  };
  Object.defineProperty(audited, 'name', { value: method.name, configurable: true });
  Object.defineProperty(audited, 'length', { value: method.length, configurable: true });
  return audited;
}

function record(
  action: string,
  options: AuditedOptions,
  args: unknown[],
  result: unknown,
  error: unknown,
  failed: boolean,
): void {
  try {
    const scope = currentAudit();
    const event: AuditEvent = { action, outcome: failed ? 'FAILURE' : 'SUCCESS' };
    const actor = options.actor !== undefined ? toCleanActor(options.actor) : scope?.actor;
    if (actor !== undefined) event.actor = actor;
    if (scope?.context !== undefined) event.context = scope.context;
    if (failed) event.reason = reasonOf(error);
    const target = toCleanTarget(hook(() => options.target?.(args, result)));
    if (target !== undefined) event.target = target;
    const metadata = hook(() => options.metadata?.(args, result));
    if (metadata !== undefined) event.metadata = cleanMetadata(metadata);
    const client = typeof options.client === 'function' ? options.client() : (options.client ?? getDefaultClient());
    Promise.resolve(client.enqueue(event)).catch((reason: unknown) => {
      warnOnce('AUDIT_NOT_ENQUEUED', `audit-service: a "${action}" event could not be recorded`, reason);
    });
  } catch (reason) {
    warnOnce('AUDIT_NOT_ENQUEUED', `audit-service: a "${action}" event could not be recorded`, reason);
  }
}

function hook<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (error) {
    warnOnce('AUDIT_HOOK', 'audit-service: an audit target or metadata function threw', error);
    return undefined;
  }
}
