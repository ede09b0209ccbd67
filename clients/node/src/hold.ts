// Holds a response back until its audit event is recorded (the middleware's fail-closed
// mode): writeHead/write/end are buffered, and once the handler ends the response (or has
// written more than `MAX_HELD_BYTES`: a download is recorded by its status before its body
// goes out) the event is sent; then the buffered response is released, or a 503 sent in its
// place. While the event is being sent, writes report backpressure, so a streaming handler
// waits for `drain` instead of filling memory.

import type { ServerResponse } from 'node:http';

import { warnOnce } from './warn.js';

type Method = 'writeHead' | 'write' | 'end';

interface Call {
  method: Method;
  args: unknown[];
}

/** What a response may hold in memory before its event is recorded. */
const MAX_HELD_BYTES = 1024 * 1024;

/** The body of the answer to a request whose event could not be recorded. */
export const NOT_AUDITED_BODY = '{"error":"not audited"}';

/** Buffers `res` until the handler ends it, then calls `record(status)`: when it resolves
 * the response goes out as written, when it rejects a 503 with `x-audit-status:
 * not-audited` replaces it (headers set earlier are dropped, but for `keep`). */
export function holdResponse(
  res: ServerResponse,
  record: (status: number) => Promise<unknown>,
  keep: readonly string[] = [],
): void {
  const original = {
    writeHead: res.writeHead,
    write: res.write,
    end: res.end,
    flushHeaders: res.flushHeaders,
  };
  const calls: Call[] = [];
  let status: number | undefined;
  let held = 0;
  let settling = false;
  let refused = false;
  let ended = false;
  let needsDrain = false;

  const patch = (name: Method | 'flushHeaders', fn: (...args: unknown[]) => unknown): void => {
    Object.defineProperty(res, name, { value: fn, writable: true, configurable: true, enumerable: false });
  };
  const restore = (): void => {
    for (const [name, fn] of Object.entries(original)) {
      Object.defineProperty(res, name, { value: fn, writable: true, configurable: true, enumerable: false });
    }
  };

  patch('writeHead', (...args) => {
    if (typeof args[0] === 'number') status = args[0];
    calls.push({ method: 'writeHead', args });
    return res;
  });
  patch('write', (...args) => {
    if (ended || refused) return false;
    // A writer that waits for the callback (or drain) before the next write must not
    // wait for the end: its callback runs now, the chunk goes out on release.
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    calls.push({ method: 'write', args });
    if (typeof callback === 'function') process.nextTick(() => Reflect.apply(callback, res, []));
    held += chunkBytes(args[0]);
    if (held > MAX_HELD_BYTES && !settling) void settle();
    needsDrain ||= settling;
    return !settling;
  });
  patch('flushHeaders', () => undefined);
  patch('end', (...args) => {
    if (ended) return res;
    ended = true;
    calls.push({ method: 'end', args });
    if (!settling) void settle();
    return res;
  });

  async function settle(): Promise<void> {
    settling = true;
    let recorded = false;
    try {
      await record(status ?? res.statusCode);
      recorded = true;
    } catch (error) {
      warnOnce('AUDIT_NOT_RECORDED', 'audit-service: a request was answered 503 because its event could not be recorded', error);
    }
    try {
      if (recorded) {
        // What the handler writes from now on goes straight out.
        restore();
        for (const call of calls.splice(0)) Reflect.apply(original[call.method], res, call.args);
        if (needsDrain && !ended) res.emit('drain');
      } else {
        // The handler may go on writing: into nothing, never after the 503's end.
        refused = true;
        refuse();
      }
    } catch {
      res.destroy(); // the connection is gone or the handler wrote something invalid
    }
  }

  function refuse(): void {
    const last = ended ? (calls[calls.length - 1]?.args ?? []) : [];
    calls.length = 0;
    const callback = last.find((arg) => typeof arg === 'function');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    for (const name of res.getHeaderNames()) {
      if (!keep.includes(name)) res.removeHeader(name);
    }
    original.writeHead.call(res, 503, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': String(Buffer.byteLength(NOT_AUDITED_BODY)),
      'x-audit-status': 'not-audited',
      'cache-control': 'no-store',
    });
    const done = typeof callback === 'function' ? [() => Reflect.apply(callback, res, [])] : [];
    Reflect.apply(original.end, res, [NOT_AUDITED_BODY, ...done]);
  }
}

function chunkBytes(chunk: unknown): number {
  if (typeof chunk === 'string') return Buffer.byteLength(chunk);
  return chunk instanceof Uint8Array ? chunk.byteLength : 0;
}
