// The client: `send()` records one event and waits for the commit; `enqueue()` accepts one
// for background delivery (batched, retried, optionally spooled to disk first); the
// catalog's helpers; reading pages and tailing the live log.

import { v7 as uuidv7 } from 'uuid';
import type { AuditSink, Metrics, Report } from './api.js';
import { helpers, type Helpers } from './catalog.js';
import { currentAudit } from './context.js';
import { DeadLetter, type ErrorHandler } from './dead-letter.js';
import { DEFAULT_DELIVERY, Delivery, type DeliveryOptions } from './delivery.js';
import { AuditError, ClosedError, RejectedError } from './errors.js';
import { toActor, toInput, type Actor, type AuditEvent, type RecordedEvent, type RequestContext, type StoredEvent } from './event.js';
import type { LogOneMutation } from './generated/graphql.js';
import { LOG_ONE } from './operations.js';
import { events, tail, type AuditLogFilter, type EventsOptions, type TailOptions } from './read.js';
import { checkFields, checkMetadataSize, checkOccurredAt } from './rules.js';
import { CONTRACT } from './generated/contract.js';
import { Spool, type SpoolOptions } from './spool.js';
import { Transport, type Credentials } from './transport.js';

/** How to reach audit-service and how to deliver. */
export interface AuditClientOptions extends Credentials, Partial<DeliveryOptions> {
  /** The server's GraphQL endpoint: `http://audit:8080/graphql`. */
  url: string;
  /** The actor of events that name none (and are not in a request the middleware saw). */
  actor?: Actor | string;
  /** Keep accepted events on disk until the server has them. */
  spool?: SpoolOptions;
  /** Where refused events are written (JSON Lines): by default `dead-letter.jsonl` in the
   * spool's folder, or `audit-dead-letter.jsonl` in the working directory; `false` for
   * none. */
  deadLetterFile?: string | false;
  /** Called with every event that will not be recorded, and why. */
  onError?: ErrorHandler;
  /** One request's time limit, in milliseconds. */
  timeoutMs?: number;
  /** How long `send()` keeps retrying, in milliseconds (10 s): also how long a
   * fail-closed request waits before its 503. */
  sendTimeoutMs?: number;
}

/** A connection to audit-service. Make one per process with `createAuditClient()`. */
export class AuditClient implements AuditSink {
  private readonly transport: Transport;
  private readonly delivery: Delivery;
  private readonly spool: Spool | undefined;
  private readonly deadLetter: DeadLetter;
  private readonly actor: Actor | undefined;
  private readonly sendTimeoutMs: number;
  private closed = false;
  /** The catalog's helpers, recording through `enqueue()`: `audit.project.created({...})`. */
  readonly project: Helpers<Promise<string>>['project'];
  readonly member: Helpers<Promise<string>>['member'];
  readonly role: Helpers<Promise<string>>['role'];
  readonly apiKey: Helpers<Promise<string>>['apiKey'];
  readonly session: Helpers<Promise<string>>['session'];
  readonly settings: Helpers<Promise<string>>['settings'];
  readonly policy: Helpers<Promise<string>>['policy'];

  constructor(options: AuditClientOptions) {
    this.transport = new Transport(options.url, options, options.timeoutMs ?? 10_000);
    this.actor = options.actor === undefined ? undefined : toActor(options.actor);
    this.sendTimeoutMs = options.sendTimeoutMs ?? 10_000;
    const deadLetterFile =
      options.deadLetterFile === false
        ? undefined
        : (options.deadLetterFile ??
          (options.spool ? `${options.spool.dir}/dead-letter.jsonl` : 'audit-dead-letter.jsonl'));
    this.deadLetter = new DeadLetter(deadLetterFile, options.onError);
    const opened = options.spool ? Spool.open(options.spool) : undefined;
    this.spool = opened?.spool;
    const settings = { ...DEFAULT_DELIVERY };
    for (const key of Object.keys(DEFAULT_DELIVERY) as Array<keyof DeliveryOptions>) {
      if (options[key] !== undefined) Object.assign(settings, { [key]: options[key] });
    }
    this.delivery = new Delivery(settings, this.transport, this.spool, this.deadLetter);
    if (opened) this.delivery.replay(opened.pending);
    const all = helpers((event) => this.enqueue(event));
    ({ project: this.project, member: this.member, role: this.role, apiKey: this.apiKey } = all);
    ({ session: this.session, settings: this.settings, policy: this.policy } = all);
  }

  /** Records `event` and resolves with it as committed, retrying what is not the event's
   * fault (the network, `UNAVAILABLE`, a credential) for `sendTimeoutMs`. */
  async send(event: AuditEvent): Promise<RecordedEvent> {
    if (this.closed) throw new ClosedError();
    const input = this.input(event);
    const deadline = Date.now() + this.sendTimeoutMs;
    let backoff = 100;
    for (;;) {
      try {
        const data = await this.transport.request<LogOneMutation>(LOG_ONE, { input });
        return data.logAuditEvent;
      } catch (error) {
        if (!(error instanceof AuditError) || error instanceof RejectedError) throw error;
        const asked = 'retryAfterMs' in error && typeof error.retryAfterMs === 'number' ? error.retryAfterMs : 0;
        const wait = Math.max(asked, backoff / 2 + Math.random() * (backoff / 2));
        if (Date.now() + wait > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, wait));
        backoff = Math.min(backoff * 2, 5_000);
      }
    }
  }

  /** Accepts `event` for delivery in the background and returns its idempotency key. The
   * event is checked, stamped and (with a spool) written to disk before this returns; the
   * promise rejects only for what is wrong now (the event, a full buffer under `drop`, a
   * closed client), and an ignored rejection is not an unhandled one. */
  enqueue(event: AuditEvent): Promise<string> {
    let accepted: Promise<string>;
    try {
      if (this.closed) throw new ClosedError();
      const input = this.input(event, false);
      const key = input.idempotencyKey as string;
      const json = JSON.stringify(input);
      // Metadata is a part of the event's JSON: only a large event needs its own count.
      if (json.length * 3 > CONTRACT.limits.metadataBytes && input.metadata != null) {
        checkMetadataSize(input.metadata);
      }
      const waiting = this.delivery.accept(json);
      accepted = waiting ? waiting.then(() => key) : Promise.resolve(key);
    } catch (error) {
      const failure = error instanceof AuditError ? error : new AuditError('INTERNAL', String(error));
      this.deadLetter.report(failure, event);
      accepted = Promise.reject(failure);
    }
    accepted.catch(() => {});
    return accepted;
  }

  /** Waits until every event accepted so far is delivered or dead-lettered, or until
   * `deadline` (milliseconds from now). */
  flush(options: { deadline?: number } = {}): Promise<Report> {
    return this.delivery.flush(Date.now() + (options.deadline ?? Number.POSITIVE_INFINITY));
  }

  /** Stops accepting events, delivers what it can within `deadline` (milliseconds, 10 s by
   * default) and closes. What is left stays in the spool for the next process. */
  async shutdown(options: { deadline?: number } = {}): Promise<Report> {
    if (this.closed) return this.delivery.report();
    this.closed = true;
    const report = await this.flush({ deadline: options.deadline ?? 10_000 });
    this.delivery.stop();
    this.spool?.close();
    return report;
  }

  /** What this client has done so far. */
  metrics(): Metrics {
    return this.delivery.metrics();
  }

  /** Every stored event matching `filter`, newest first unless `orderBy` says. */
  events(filter?: AuditLogFilter, options?: EventsOptions): AsyncGenerator<StoredEvent> {
    return events(this.transport, filter, options);
  }

  /** Events matching `filter` as they are recorded, resuming after a dropped connection
   * from the last one seen. */
  tail(filter?: AuditLogFilter, options?: TailOptions): AsyncGenerator<StoredEvent> {
    return tail(this.transport, filter, options);
  }

  /** `event` as the mutation's input, stamped and checked (with `metadataSize: false`, but
   * for the metadata's size, which the caller checks). */
  private input(event: AuditEvent, metadataSize = true) {
    const scope = currentAudit();
    const input = toInput(
      event,
      { actor: scope?.actor ?? this.actor, context: scope?.context },
      uuidv7,
    );
    checkFields(input, metadataSize);
    if (event.occurredAt !== undefined) checkOccurredAt(input.occurredAt);
    return input;
  }
}

/** A client for the audit-service at `options.url`. */
export function createAuditClient(options: AuditClientOptions): AuditClient {
  return new AuditClient(options);
}

export type { RequestContext };
