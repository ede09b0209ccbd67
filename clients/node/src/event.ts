// The events callers record and read, and how one becomes the mutation's input.

import { InvalidEventError } from './errors.js';
import type {
  ActorType,
  AuditEventInput,
  AuditOutcome,
  EventsQuery,
  LogOneMutation,
} from './generated/graphql.js';

export type { ActorType, AuditEventInput, AuditOutcome as Outcome };

/** Who performed an operation; `type` defaults to `USER`. */
export interface Actor {
  type?: ActorType;
  id: string;
  name?: string;
}

/** The resource an operation acted on. */
export interface Target {
  type: string;
  id: string;
  name?: string;
}

/** Where the request came from. */
export interface RequestContext {
  ipAddress?: string;
  userAgent?: string;
  requestId?: string;
  /** A W3C trace id: 32 lower-case hex digits. */
  traceId?: string;
}

/** An operation to record. */
export interface AuditEvent {
  /** 2 to 4 dot-separated lower-case segments: `project.created`. */
  action: string;
  /** A user id, or the actor; by default the request's (middleware) or the client's. */
  actor?: Actor | string;
  target?: Target;
  /** `SUCCESS` unless said. */
  outcome?: AuditOutcome;
  reason?: string;
  /** When it happened; stamped when the event is accepted. */
  occurredAt?: Date | string;
  /** A JSON object of at most 64 KiB. */
  metadata?: Record<string, unknown>;
  /** By default the request's (middleware). */
  context?: RequestContext;
  /** Made (a UUID v7) when the event is accepted, unless given. */
  idempotencyKey?: string;
  /** The people the event holds personal data of, besides its actor (at most 16): erasing
   * any of them (`eraseAuditSubject`) erases the event's personal values. */
  subjectIds?: string[];
}

/** What `send()` resolves with: the event as committed. */
export type RecordedEvent = LogOneMutation['logAuditEvent'];

/** An event as stored, as `events()` and `tail()` yield it. */
export type StoredEvent = EventsQuery['auditLogs']['edges'][number]['node'];

/** What fills an event's missing actor and context. */
export interface Defaults {
  actor?: Actor | undefined;
  context?: RequestContext | undefined;
}

/** An actor as given: a user id or an `Actor`. */
export function toActor(actor: Actor | string): Actor {
  return typeof actor === 'string' ? { type: 'USER', id: actor } : actor;
}

/** The mutation's input for `event`, with the defaults filled in, the time and the key
 * stamped. Throws `InvalidEventError` when there is no actor or the time is unusable. */
export function toInput(event: AuditEvent, defaults: Defaults, key: () => string): AuditEventInput {
  if (typeof event !== 'object' || event === null) {
    throw new InvalidEventError('', 'an audit event must be an object');
  }
  const given = event.actor ?? defaults.actor;
  if (given === undefined) {
    throw new InvalidEventError('actor', 'actor is missing: give one, or set the client\'s actor');
  }
  const actor = toActor(given);
  const input: AuditEventInput = {
    action: event.action,
    actor: { type: actor.type ?? 'USER', id: actor.id, name: actor.name },
    occurredAt: occurredAt(event.occurredAt),
    idempotencyKey: event.idempotencyKey ?? key(),
  };
  if (event.target !== undefined) {
    input.target = { type: event.target.type, id: event.target.id, name: event.target.name };
  }
  if (event.outcome !== undefined) input.outcome = event.outcome;
  if (event.reason !== undefined) input.reason = event.reason;
  if (event.metadata !== undefined) input.metadata = event.metadata;
  if (event.subjectIds !== undefined) input.subjectIds = event.subjectIds;
  const context = event.context ?? defaults.context;
  if (context != null) {
    if (typeof context !== 'object') {
      throw new InvalidEventError('context', 'context must be an object');
    }
    // Only the fields the server knows: it refuses an input with any other.
    const { ipAddress, userAgent, requestId, traceId } = context;
    input.context = { ipAddress, userAgent, requestId, traceId };
  }
  return input;
}

let stampedAt = -1;
let stamp = '';

/** Now, in RFC 3339: one string per millisecond, shared by the events stamped within it. */
function now(): string {
  const ms = Date.now();
  if (ms !== stampedAt) {
    stampedAt = ms;
    stamp = new Date(ms).toISOString();
  }
  return stamp;
}

function occurredAt(value: Date | string | undefined): string {
  if (value === undefined) return now();
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) {
      throw new InvalidEventError('occurredAt', 'occurredAt is not a valid date');
    }
    return value.toISOString();
  }
  return value;
}
