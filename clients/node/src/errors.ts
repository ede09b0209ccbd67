// The one error type of the package, by what the caller can do about it.

/** Why an event was not recorded. `code` is the server's error code or the kit's own. */
export class AuditError extends Error {
  readonly code: string;
  /** The event's field at fault (`actor.id`, `metadata`), when one is. */
  readonly field: string | undefined;

  constructor(code: string, message: string, field?: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.field = field;
  }
}

/** The event breaks the server's rules (checked here, before sending): never retried. */
export class InvalidEventError extends AuditError {
  constructor(field: string, message: string) {
    super('BAD_USER_INPUT', message, field);
  }
}

/** The server refused the event for good (`BAD_USER_INPUT`, `IDEMPOTENCY_CONFLICT`). */
export class RejectedError extends AuditError {}

/** The server refused the credential (`UNAUTHENTICATED`, `FORBIDDEN`): retried in
 * background delivery, since a token may be renewed or a key granted. */
export class DeniedError extends AuditError {}

/** Not now: the network, a 5xx, `UNAVAILABLE`, `RATE_LIMITED`. Retried. */
export class UnavailableError extends AuditError {
  /** How long the server asked to wait, in milliseconds. */
  readonly retryAfterMs: number | undefined;

  constructor(code: string, message: string, retryAfterMs?: number) {
    super(code, message);
    this.retryAfterMs = retryAfterMs;
  }
}

/** The buffer is full and the policy is `drop`. */
export class BufferFullError extends AuditError {
  constructor() {
    super('BUFFER_FULL', 'the audit buffer is full; the event was dropped');
  }
}

/** The client is shut down. */
export class ClosedError extends AuditError {
  constructor() {
    super('CLOSED', 'the audit client is shut down');
  }
}

/** Codes that mean "this event is wrong": never retried. */
export function isRejection(code: string): boolean {
  return code === 'BAD_USER_INPUT' || code === 'IDEMPOTENCY_CONFLICT';
}

/** Codes that mean "this credential is wrong". */
export function isDenial(code: string): boolean {
  return code === 'UNAUTHENTICATED' || code === 'FORBIDDEN';
}
