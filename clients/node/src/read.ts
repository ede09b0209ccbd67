// Reading the log: every page of a query, and the live subscription, resumed from its last
// cursor after a dropped connection so that nothing is missed and nothing comes twice.

import { createClient } from 'graphql-ws/client';
import WebSocket from 'ws';
import { AuditError } from './errors.js';
import type { StoredEvent } from './event.js';
import type {
  AuditLogFilter,
  AuditLogOrder,
  EventsQuery,
  TailSubscription,
} from './generated/graphql.js';
import { EVENTS, TAIL } from './operations.js';
import type { Transport } from './transport.js';

export type { AuditLogFilter, AuditLogOrder };

/** How `events()` pages. */
export interface EventsOptions {
  /** Events per request (the server takes up to 500). */
  pageSize?: number;
  orderBy?: AuditLogOrder;
  /** Start after this cursor. */
  after?: string;
}

/** Every event matching `filter`, page after page. */
export async function* events(
  transport: Transport,
  filter: AuditLogFilter = {},
  options: EventsOptions = {},
): AsyncGenerator<StoredEvent> {
  let after = options.after ?? null;
  for (;;) {
    const data = await transport.request<EventsQuery>(EVENTS, {
      filter,
      first: options.pageSize ?? 100,
      after,
      orderBy: options.orderBy ?? 'OCCURRED_AT_DESC',
    });
    for (const edge of data.auditLogs.edges) yield edge.node;
    const { hasNextPage, endCursor } = data.auditLogs.pageInfo;
    if (!hasNextPage || endCursor === null) return;
    after = endCursor;
  }
}

/** How `tail()` starts. */
export interface TailOptions {
  /** Replay what came after this cursor, then go live; live only without it. */
  after?: string;
  /** Stop when this signal aborts. */
  signal?: AbortSignal;
}

const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5_000;

/** New events matching `filter` as they are recorded. A dropped connection is opened
 * again with the last cursor seen, so the server replays exactly what was missed. A
 * refusal (a bad filter, a credential without `audit:read`) ends the iteration with an
 * `AuditError`. */
export async function* tail(
  transport: Transport,
  filter: AuditLogFilter = {},
  options: TailOptions = {},
): AsyncGenerator<StoredEvent> {
  let after = options.after ?? null;
  let wait = RETRY_MIN_MS;
  const url = transport.url.replace(/^http/, 'ws');
  while (!options.signal?.aborted) {
    const authorization = await transport.authorization();
    const client = createClient({
      url,
      webSocketImpl: WebSocket,
      retryAttempts: 0,
      lazy: true,
      connectionParams: authorization ? { authorization } : {},
    });
    const stop = () => void client.dispose();
    options.signal?.addEventListener('abort', stop, { once: true });
    try {
      const results = client.iterate<TailSubscription>({ query: TAIL, variables: { filter, after } });
      for await (const result of results) {
        const failure = result.errors?.[0];
        if (failure) throw refusal(failure);
        const event = result.data?.auditLogCreated;
        if (!event) continue;
        after = event.cursor;
        wait = RETRY_MIN_MS;
        yield event;
      }
      if (options.signal?.aborted) return;
    } catch (error) {
      if (error instanceof AuditError) throw error;
      if (Array.isArray(error)) throw refusal(error[0] as GraphQLError);
      if (options.signal?.aborted) return;
      // the connection dropped: open it again, from the last cursor
    } finally {
      options.signal?.removeEventListener('abort', stop);
      await client.dispose();
    }
    await new Promise((resolve) => setTimeout(resolve, wait / 2 + Math.random() * (wait / 2)));
    wait = Math.min(wait * 2, RETRY_MAX_MS);
  }
}

interface GraphQLError {
  message?: string;
  extensions?: { code?: unknown; field?: unknown };
}

function refusal(error: GraphQLError | undefined): AuditError {
  const code = typeof error?.extensions?.code === 'string' ? error.extensions.code : 'INTERNAL';
  const field = typeof error?.extensions?.field === 'string' ? error.extensions.field : undefined;
  return new AuditError(code, error?.message ?? code, field);
}
