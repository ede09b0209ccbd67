// The audit scope of the work in progress (a request's actor and context), carried through
// async calls, so that the decorator and the plugin record who did what, from where.

import { AsyncLocalStorage } from 'node:async_hooks';

import type { Actor, RequestContext } from './event.js';

/** Who is acting and where the request came from, for the events recorded within. */
export interface AuditScope {
  actor?: Actor | undefined;
  context?: RequestContext | undefined;
}

const storage = new AsyncLocalStorage<AuditScope>();

/** Runs `fn` with `scope` as the audit scope of everything it calls, sync or async. */
export function runWithAudit<R>(scope: AuditScope, fn: () => R): R {
  return storage.run(scope, fn);
}

/** The audit scope of the current call, if any. */
export function currentAudit(): AuditScope | undefined {
  return storage.getStore();
}
