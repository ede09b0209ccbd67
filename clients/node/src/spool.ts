// The spool: an append-only log of accepted events on disk, so that what `enqueue()`
// accepted survives a crash of the process. Events go to segment files
// (`spool-000001.jsonl`, one JSON event per line); `spool.ack` says how far delivery has
// got (a segment and an offset in it), and segments wholly behind it are removed. Opening a
// spool cuts a torn last line and hands back what was not acknowledged, to be sent again
// with its original key.

import {
  closeSync,
  constants,
  fsyncSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readdirSync,
  unlinkSync,
  writeSync,
  mkdirSync,
  fstatSync,
} from 'node:fs';
import { join, resolve } from 'node:path';

/** Where an event's line ends in the spool. */
export interface Position {
  segment: number;
  offset: number;
}

/** An event found in the spool and not acknowledged. */
export interface Unacknowledged {
  json: string;
  at: Position;
}

/** Spool settings. */
export interface SpoolOptions {
  dir: string;
  /** fsync every write: survive a power cut, not only a crash of the process. */
  fsync?: boolean;
}

const SEGMENT_BYTES = 4 * 1024 * 1024;
const SEGMENT = /^spool-(\d{6,})\.jsonl$/;
const ACK_WIDTH = 40;

/** An open spool, owned by this process until `close()`. */
export class Spool {
  private readonly dir: string;
  private readonly fsync: boolean;
  private readonly ack: number;
  private segment = 0;
  private fd = -1;
  private size = 0;
  private acked: Position;

  private constructor(options: SpoolOptions, ack: number, acked: Position) {
    this.dir = options.dir;
    this.fsync = options.fsync ?? false;
    this.ack = ack;
    this.acked = acked;
  }

  /** Opens the spool in `options.dir` (made if missing), taking its lock, and returns it
   * with the events it holds that were not acknowledged, oldest first. */
  static open(given: SpoolOptions): { spool: Spool; pending: Unacknowledged[] } {
    const options = { ...given, dir: resolve(given.dir) };
    mkdirSync(options.dir, { recursive: true });
    lock(options.dir);
    // Not opened for appending: the acknowledgement is rewritten in place.
    const ack = openSync(join(options.dir, 'spool.ack'), constants.O_RDWR | constants.O_CREAT);
    const segments = segmentsIn(options.dir);
    const acked = checkedAck(options.dir, parseAck(readFileSync(join(options.dir, 'spool.ack'), 'utf8')), segments);
    const spool = new Spool(options, ack, acked);
    const pending: Unacknowledged[] = [];
    for (const segment of segments) {
      if (segment < acked.segment) {
        unlinkSync(join(options.dir, segmentName(segment)));
        continue;
      }
      const start = segment === acked.segment ? acked.offset : 0;
      pending.push(...readSegment(options.dir, segment, start));
    }
    spool.openSegment(Math.max(acked.segment, segments.at(-1) ?? 1));
    return { spool, pending };
  }

  /** Appends one event (one line of JSON) and returns where it ends. */
  append(json: string): Position {
    if (this.size >= SEGMENT_BYTES) this.openSegment(this.segment + 1);
    const line = Buffer.from(`${json}\n`);
    writeSync(this.fd, line);
    if (this.fsync) fsyncSync(this.fd);
    this.size += line.length;
    return { segment: this.segment, offset: this.size };
  }

  /** Records that every event up to `at` is settled (delivered or dead-lettered), and
   * removes the segments behind it. */
  acknowledge(at: Position): void {
    const previous = this.acked.segment;
    this.acked = at;
    writeSync(this.ack, `${at.segment} ${at.offset}`.padEnd(ACK_WIDTH - 1) + '\n', 0);
    if (this.fsync) fsyncSync(this.ack);
    for (let segment = previous; segment < at.segment; segment += 1) {
      try {
        unlinkSync(join(this.dir, segmentName(segment)));
      } catch {
        // gone already
      }
    }
  }

  /** Closes the files and releases the lock. */
  close(): void {
    closeSync(this.fd);
    closeSync(this.ack);
    unlinkSync(join(this.dir, 'spool.lock'));
    HELD.delete(this.dir);
  }

  private openSegment(segment: number): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.segment = segment;
    this.fd = openSync(join(this.dir, segmentName(segment)), 'a');
    this.size = fstatSync(this.fd).size;
  }
}

function segmentName(segment: number): string {
  return `spool-${String(segment).padStart(6, '0')}.jsonl`;
}

function segmentsIn(dir: string): number[] {
  return readdirSync(dir)
    .map((name) => SEGMENT.exec(name)?.[1])
    .filter((n): n is string => n !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
}

const START: Position = { segment: 1, offset: 0 };

function parseAck(text: string): Position {
  const match = /^(\d{1,9}) (\d{1,15})\s*$/.exec(text);
  return match ? { segment: Number(match[1]), offset: Number(match[2]) } : START;
}

/** `ack` if it points at the end of a line of an existing segment (or past every segment
 * there is); anything else (a damaged file) means replaying the whole spool, which the
 * keys make harmless. */
function checkedAck(dir: string, ack: Position, segments: number[]): Position {
  const first = segments[0];
  if (first === undefined) return ack.offset === 0 ? ack : START;
  const replayAll = { segment: first, offset: 0 };
  if (!segments.includes(ack.segment)) return replayAll;
  if (ack.offset === 0) return ack;
  const bytes = readFileSync(join(dir, segmentName(ack.segment)));
  return ack.offset <= bytes.length && bytes[ack.offset - 1] === 0x0a ? ack : replayAll;
}

/** The complete lines of a segment from `start`; a torn last line (the process died while
 * writing it, so `enqueue()` never returned) is cut off. */
function readSegment(dir: string, segment: number, start: number): Unacknowledged[] {
  const path = join(dir, segmentName(segment));
  const bytes = readFileSync(path);
  const end = bytes.lastIndexOf(0x0a) + 1;
  if (end < bytes.length) {
    const fd = openSync(path, 'r+');
    ftruncateSync(fd, end);
    closeSync(fd);
  }
  const out: Unacknowledged[] = [];
  let from = start;
  while (from < end) {
    const newline = bytes.indexOf(0x0a, from);
    out.push({ json: bytes.toString('utf8', from, newline), at: { segment, offset: newline + 1 } });
    from = newline + 1;
  }
  return out;
}

/** The spools this process holds. */
const HELD = new Set<string>();

/** Takes `dir`'s lock: one process per spool. A lock left by a process that is gone is
 * taken over. */
function lock(dir: string): void {
  const path = join(dir, 'spool.lock');
  for (let attempt = 0; attempt < 2; attempt += 1) {
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      HELD.add(dir);
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const owner = Number(readFileSync(path, 'utf8'));
      if (HELD.has(dir) || isAlive(owner)) {
        throw new Error(`the spool ${dir} is in use by process ${owner}`);
      }
      unlinkSync(path);
    }
  }
  throw new Error(`cannot lock the spool ${dir}`);
}

function isAlive(pid: number): boolean {
  // A lock with this process's own id and not in HELD was left by an earlier process that
  // happened to have the same id.
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
