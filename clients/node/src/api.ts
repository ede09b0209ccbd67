// What a client offers: the interface the integrations (middleware, decorator, plugin)
// are written against, so that they can be tested and used with any implementation.

import type { AuditEvent, RecordedEvent } from './event.js';

/** Where delivery stands. */
export interface Report {
  /** Events the server acknowledged. */
  delivered: number;
  /** Events the server refused for good, written to the dead-letter file. */
  deadLettered: number;
  /** Events still waiting (the deadline passed first); with a spool they stay in it. */
  undelivered: number;
}

/** What a client has done since it was made. */
export interface Metrics extends Report {
  /** Events accepted by `enqueue()`. */
  enqueued: number;
  /** Events dropped because the buffer was full under the `drop` policy. */
  dropped: number;
  /** Batches sent, and how many of them were retried. */
  batches: number;
  retries: number;
  /** Events and bytes waiting in memory. */
  buffered: number;
  bufferedBytes: number;
}

/** The writing half of a client. */
export interface AuditSink {
  /** Records `event` and resolves once it is committed. Throws `AuditError`. */
  send(event: AuditEvent): Promise<RecordedEvent>;
  /** Accepts `event` for background delivery and returns its idempotency key. Everything
   * that can refuse the event synchronously (its rules, a full buffer under `drop`, a
   * shut-down client) rejects the promise; it never rejects later, and a caller that
   * ignores it gets no unhandled rejection. */
  enqueue(event: AuditEvent): Promise<string>;
}
