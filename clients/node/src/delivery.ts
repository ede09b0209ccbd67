// Background delivery: accepted events wait in a bounded buffer and go out in batches (at
// most 500 events and 768 KiB, within 20 ms of the first, 8 batches in flight). A batch the
// server cannot take now is retried with backoff; an event it refuses for good is taken
// out of its batch and dead-lettered, and the rest go on. With a spool, the spool's
// acknowledgement follows the settled prefix of what was accepted.

import type { DeadLetter } from './dead-letter.js';
import { AuditError, BufferFullError, ClosedError, RejectedError, UnavailableError } from './errors.js';
import { LOG_MANY } from './operations.js';
import type { Position, Spool } from './spool.js';
import type { Transport } from './transport.js';
import type { Metrics, Report } from './api.js';

/** How delivery is bounded and paced. */
export interface DeliveryOptions {
  /** Events per batch (the server takes 1,000). */
  maxBatch: number;
  /** Bytes per request body (the server takes 1 MiB). */
  maxBatchBytes: number;
  /** How long the first event of a batch waits for company, in milliseconds. */
  lingerMs: number;
  maxInFlight: number;
  /** The buffer's bounds: events and bytes, in memory, not yet settled. */
  maxEvents: number;
  maxBytes: number;
  /** What `enqueue()` does when the buffer is full: wait for room, or drop the event. */
  onFull: 'wait' | 'drop';
  /** How long an event is retried before it is dead-lettered, in milliseconds. */
  maxAgeMs: number;
}

export const DEFAULT_DELIVERY: DeliveryOptions = {
  maxBatch: 500,
  maxBatchBytes: 768 * 1024,
  lingerMs: 20,
  maxInFlight: 8,
  maxEvents: 50_000,
  maxBytes: 64 * 1024 * 1024,
  onFull: 'wait',
  maxAgeMs: 24 * 60 * 60 * 1000,
};

/** One accepted event: its input as JSON, and where it is in the spool. */
interface Item {
  json: string;
  bytes: number;
  /** Its place in the order of acceptance, for the spool's acknowledgement (set when it
   * enters the queue). */
  seq: number;
  at: Position | undefined;
  since: number;
}

const BODY_HEAD = `{"query":${JSON.stringify(LOG_MANY)},"variables":{"inputs":[`;
const BODY_TAIL = ']}}';
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5_000;
const INPUT = /^inputs\[(\d+)\]/;

/** The delivery of one client's enqueued events. */
export class Delivery {
  private readonly options: DeliveryOptions;
  private readonly transport: Transport;
  private readonly spool: Spool | undefined;
  private readonly deadLetter: DeadLetter;
  /** Waiting events, oldest first, from `head` on. */
  private queue: Item[] = [];
  private head = 0;
  /** Batches to send again as they are: retried, or halves of a refused one, which must
   * not be merged again. */
  private retry: Item[][] = [];
  private readonly waiting: Array<{ item: Item; admit: (error?: Error) => void }> = [];
  private inFlight = 0;
  private pendingEvents = 0;
  private pendingBytes = 0;
  private nextSeq = 0;
  private readonly tracker = new Tracker();
  private timer: NodeJS.Timeout | undefined;
  private pausedUntil = 0;
  private backoff = BACKOFF_MIN_MS;
  private flushing = 0;
  private readonly idle: Array<() => void> = [];
  private readonly aborter = new AbortController();
  private readonly counts = { enqueued: 0, delivered: 0, deadLettered: 0, dropped: 0, batches: 0, retries: 0 };

  constructor(options: DeliveryOptions, transport: Transport, spool: Spool | undefined, deadLetter: DeadLetter) {
    this.options = options;
    this.transport = transport;
    this.spool = spool;
    this.deadLetter = deadLetter;
  }

  /** Takes `json` (a checked input) for delivery. Resolves once it is in the buffer (and
   * the spool): at once, or when there is room under `wait`. */
  accept(json: string): Promise<void> | undefined {
    const item: Item = { json, bytes: Buffer.byteLength(json), seq: -1, at: undefined, since: Date.now() };
    if (this.hasRoom(item.bytes) && this.waiting.length === 0) {
      this.admit(item);
      return undefined;
    }
    if (this.options.onFull === 'drop') {
      this.counts.dropped += 1;
      throw new BufferFullError();
    }
    return new Promise((resolve, reject) =>
      this.waiting.push({ item, admit: (error) => (error ? reject(error) : resolve()) }),
    );
  }

  /** Puts events found in the spool back in the queue, with their original keys; a line
   * that is not JSON (a damaged spool) is dead-lettered. */
  replay(pending: Array<{ json: string; at: Position }>): void {
    for (const { json, at } of pending) {
      const item = this.push({ json, bytes: Buffer.byteLength(json), seq: -1, at: undefined, since: Date.now() }, at);
      if (!isJsonObject(json)) {
        // Taken back out of the queue, and settled so that the spool moves past it.
        this.queue.pop();
        this.deadLetter.write(new AuditError('SPOOL_DAMAGED', 'a spooled line is not an event'), JSON.stringify(json));
        this.settle(item, false);
      }
    }
  }

  /** Resolves when everything accepted so far is settled, or at `deadline` (ms since the
   * epoch), with what is left. */
  async flush(deadline = Number.POSITIVE_INFINITY): Promise<Report> {
    this.flushing += 1;
    this.schedule(0);
    try {
      if (this.pendingEvents > 0 || this.waiting.length > 0) {
        await new Promise<void>((resolve) => {
          this.idle.push(resolve);
          if (Number.isFinite(deadline)) setTimeout(resolve, Math.max(0, deadline - Date.now())).unref();
        });
      }
    } finally {
      this.flushing -= 1;
    }
    return this.report();
  }

  /** Stops sending: requests in flight are abandoned (their events stay in the spool), and
   * events still waiting for room are refused. */
  stop(): void {
    this.aborter.abort();
    clearTimeout(this.timer);
    this.timer = undefined;
    this.queue = [];
    this.retry = [];
    this.head = 0;
    for (const { item, admit } of this.waiting.splice(0)) {
      const error = new ClosedError();
      this.deadLetter.report(error, item.json);
      admit(error);
    }
    for (const resolve of this.idle.splice(0)) resolve();
  }

  report(): Report {
    return {
      delivered: this.counts.delivered,
      deadLettered: this.counts.deadLettered,
      undelivered: this.pendingEvents + this.waiting.length,
    };
  }

  metrics(): Metrics {
    return {
      ...this.counts,
      undelivered: this.pendingEvents + this.waiting.length,
      buffered: this.pendingEvents,
      bufferedBytes: this.pendingBytes,
    };
  }

  private hasRoom(bytes: number): boolean {
    return (
      this.pendingEvents === 0 ||
      (this.pendingEvents < this.options.maxEvents && this.pendingBytes + bytes <= this.options.maxBytes)
    );
  }

  private admit(item: Item): void {
    const at = this.spool?.append(item.json);
    this.counts.enqueued += 1;
    this.push(item, at);
  }

  private push(queued: Item, at: Position | undefined): Item {
    queued.seq = this.nextSeq++;
    queued.at = at;
    this.queue.push(queued);
    this.pendingEvents += 1;
    this.pendingBytes += queued.bytes;
    if (this.queued() === 1) this.schedule(this.options.lingerMs);
    else if (this.queued() >= this.options.maxBatch) this.schedule(0);
    return queued;
  }

  private queued(): number {
    return this.queue.length - this.head + this.retry.length;
  }

  /** Sends what can go now, and sets a timer for the rest. */
  private schedule(delayMs: number): void {
    const wait = Math.max(delayMs, this.pausedUntil - Date.now());
    if (this.timer !== undefined) {
      if (wait > 0) return;
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pump();
    }, wait);
  }

  private pump(): void {
    const now = Date.now();
    if (now < this.pausedUntil) return this.schedule(0);
    while (this.inFlight < this.options.maxInFlight && this.queued() > 0) {
      const oldest = this.retry[0]?.[0] ?? this.queue[this.head];
      const full = this.queued() >= this.options.maxBatch;
      if (!full && this.flushing === 0 && oldest && now - oldest.since < this.options.lingerMs && this.retry.length === 0) {
        return this.schedule(this.options.lingerMs - (now - oldest.since));
      }
      void this.send(this.take());
    }
  }

  /** The next batch: a batch to retry as it is, else the oldest waiting events. */
  private take(): Item[] {
    const again = this.retry.shift();
    if (again) return again;
    const batch: Item[] = [];
    let bytes = BODY_HEAD.length + BODY_TAIL.length;
    const fits = (item: Item) =>
      batch.length === 0 || (batch.length < this.options.maxBatch && bytes + item.bytes + 1 <= this.options.maxBatchBytes);
    while (this.head < this.queue.length && fits(this.queue[this.head] as Item)) {
      const item = this.queue[this.head++] as Item;
      batch.push(item);
      bytes += item.bytes + 1;
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    return batch;
  }

  private async send(batch: Item[]): Promise<void> {
    this.inFlight += 1;
    this.counts.batches += 1;
    try {
      const body = BODY_HEAD + batch.map((item) => item.json).join(',') + BODY_TAIL;
      const data = await this.transport.post<{ logAuditEvents?: unknown }>(body, this.aborter.signal);
      // Anything but one result per event is not an acknowledgement (a misdirected URL).
      if (!Array.isArray(data.logAuditEvents) || data.logAuditEvents.length !== batch.length) {
        throw new UnavailableError('BAD_RESPONSE', 'the answer does not acknowledge the batch');
      }
      this.backoff = BACKOFF_MIN_MS;
      for (const item of batch) this.settle(item, true);
    } catch (error) {
      if (!this.aborter.signal.aborted) this.failed(batch, error);
    } finally {
      this.inFlight -= 1;
      if (!this.aborter.signal.aborted && this.queued() > 0) this.schedule(0);
    }
  }

  /** A batch failed: dead-letter what the server refused for good, retry the rest. */
  private failed(batch: Item[], error: unknown): void {
    const cause = error instanceof AuditError ? error : new UnavailableError('INTERNAL', String(error));
    if (cause instanceof RejectedError) {
      const index = INPUT.exec(cause.field ?? '')?.[1];
      const culprit = index === undefined ? undefined : batch[Number(index)];
      if (culprit) {
        const field = (cause.field ?? '').replace(INPUT, '').replace(/^\./, '') || undefined;
        this.deadLetter.write(new RejectedError(cause.code, cause.message, field), culprit.json);
        this.settle(culprit, false);
        this.requeue(batch.filter((item) => item !== culprit));
      } else if (batch.length > 1) {
        // Which event is at fault is not said (a body too large): halve and try again.
        const half = Math.ceil(batch.length / 2);
        this.requeue(batch.slice(0, half));
        this.requeue(batch.slice(half));
      } else {
        this.deadLetter.write(cause, (batch[0] as Item).json);
        this.settle(batch[0] as Item, false);
      }
      return;
    }
    this.counts.retries += 1;
    const now = Date.now();
    const expired = batch.filter((item) => now - item.since > this.options.maxAgeMs);
    for (const item of expired) {
      this.deadLetter.write(new AuditError('EXPIRED', `not delivered within ${this.options.maxAgeMs} ms: ${cause.message}`), item.json);
      this.settle(item, false);
    }
    this.requeue(batch.filter((item) => !expired.includes(item)));
    const asked = cause instanceof UnavailableError ? (cause.retryAfterMs ?? 0) : 0;
    const jittered = this.backoff / 2 + Math.random() * (this.backoff / 2);
    this.pausedUntil = Math.max(this.pausedUntil, now + Math.max(asked, jittered));
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    this.deadLetter.report(cause, undefined);
  }

  private requeue(items: Item[]): void {
    if (items.length > 0) this.retry.push(items);
  }

  private settle(item: Item, delivered: boolean): void {
    if (delivered) this.counts.delivered += 1;
    else this.counts.deadLettered += 1;
    this.pendingEvents -= 1;
    this.pendingBytes -= item.bytes;
    const acked = this.tracker.settle(item.seq, item.at);
    if (acked && this.spool) this.spool.acknowledge(acked);
    for (let next = this.waiting[0]; next && this.hasRoom(next.item.bytes); next = this.waiting[0]) {
      this.waiting.shift();
      this.admit(next.item);
      next.admit();
    }
    if (this.pendingEvents === 0 && this.waiting.length === 0) {
      for (const resolve of this.idle.splice(0)) resolve();
    }
  }
}

/** Follows the prefix of accepted events that is settled, which is what the spool may
 * acknowledge: events settle out of order when several batches are in flight. */
class Tracker {
  private next = 0;
  private readonly ahead = new Map<number, Position | undefined>();

  /** Settles event `seq` (ending at `at` in the spool); returns the new end of the
   * settled prefix when it moved and is in the spool. */
  settle(seq: number, at: Position | undefined): Position | undefined {
    this.ahead.set(seq, at);
    let moved: Position | undefined;
    while (this.ahead.has(this.next)) {
      moved = this.ahead.get(this.next) ?? moved;
      this.ahead.delete(this.next);
      this.next += 1;
    }
    return moved;
  }
}

function isJsonObject(json: string): boolean {
  try {
    const value: unknown = JSON.parse(json);
    return typeof value === 'object' && value !== null && !Array.isArray(value);
  } catch {
    return false;
  }
}
