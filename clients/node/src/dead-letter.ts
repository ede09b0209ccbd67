// Where events the server refused for good go: a JSON Lines file (one
// `{ at, code, field, message, event }` per line) and the client's `onError`.

import { appendFileSync } from 'node:fs';
import type { AuditError } from './errors.js';

/** Called with every event that will not be recorded, and why. */
export type ErrorHandler = (error: AuditError, event: unknown) => void;

/** Writes refused events down and tells the caller. */
export class DeadLetter {
  private readonly path: string | undefined;
  private readonly onError: ErrorHandler | undefined;

  constructor(path: string | undefined, onError: ErrorHandler | undefined) {
    this.path = path;
    this.onError = onError;
  }

  /** Records that `json` (an event's input) will not be recorded because of `error`. */
  write(error: AuditError, json: string): void {
    if (this.path !== undefined) {
      const line =
        `{"at":${JSON.stringify(new Date().toISOString())},"code":${JSON.stringify(error.code)},` +
        `"field":${JSON.stringify(error.field ?? null)},"message":${JSON.stringify(error.message)},` +
        `"event":${json}}\n`;
      try {
        appendFileSync(this.path, line);
      } catch {
        // the file cannot be written: onError still hears of the event
      }
    }
    this.report(error, json);
  }

  /** Tells `onError`, which must not break delivery by throwing. */
  report(error: AuditError, event: unknown): void {
    try {
      const handled: unknown = this.onError?.(error, typeof event === 'string' ? safeParse(event) : event);
      // An async handler's rejection is the handler's failure too, never an unhandled one.
      if (handled instanceof Promise) handled.catch(() => {});
    } catch {
      // the caller's handler failed; delivery goes on
    }
  }
}

function safeParse(json: string): unknown {
  try {
    return JSON.parse(json);
  } catch {
    return json;
  }
}
