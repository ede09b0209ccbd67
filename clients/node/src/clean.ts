// Makes hostile values recordable rather than refused: control characters, lone
// surrogates, over-long text, and metadata that is not plain JSON or breaks the server's
// limits (depth, value count, size, unsafe integers) are rewritten, never thrown on.

/** The server's limits on metadata (contract/contract.json). */
const METADATA_BYTES = 65536;
const METADATA_DEPTH = 32;
const METADATA_VALUES = 4096;
const SAFE_INTEGER = 9007199254740991;
/** Longest metadata string and key kept, in code points. */
const METADATA_STRING = 4096;
const METADATA_KEY = 256;

/** What stands in for a value that was cut: too deep, or past the value budget. */
export const TRUNCATED = '[truncated]';
/** What stands in for an object that contains itself. */
export const CYCLE = '[cycle]';

// C0 and C1 control characters: Unicode's `Cc`, what the server's `char::is_control` sees.
const CONTROLS = /[\u0000-\u001f\u007f-\u009f]/g;

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

// `String.prototype.toWellFormed` is in Node 20 (and @types/node) but not ES2022.
function wellFormed(text: string): string {
  return typeof text.toWellFormed === 'function'
    ? text.toWellFormed()
    : text.replace(LONE_SURROGATE, '\ufffd');
}

/** A string of `value` (non-strings converted, `null`/`undefined` as `''`) with control
 * characters and lone surrogates replaced by U+FFFD and at most `max` code points. */
export function cleanText(value: unknown, max: number): string {
  // Every code point is at most two UTF-16 units, so 2 × max units hold at least max code
  // points: cut first so that a huge input costs no more than a small one.
  const text = wellFormed(toText(value).slice(0, Math.max(0, max) * 2)).replace(CONTROLS, '\ufffd');
  return truncate(text, max);
}

/** An identifier for `value`: cleaned as `cleanText`, trimmed, at most `max` code points,
 * and `"unknown"` when nothing is left. */
export function cleanId(value: unknown, max: number): string {
  const id = truncate(cleanText(value, max * 2 + 64).trim(), max).trim();
  return id === '' ? 'unknown' : id;
}

/** `value`'s text when it is a usable identifier (a non-blank string or a finite number),
 * else `undefined`: for optional ids such as a target's. */
export function idText(value: unknown): string | undefined {
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'string' && value.trim() !== '') return value;
  return undefined;
}

function toText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === null || value === undefined) return '';
  try {
    return String(value);
  } catch {
    return '';
  }
}

function truncate(text: string, max: number): string {
  if (text.length <= max) return text;
  let count = 0;
  let index = 0;
  for (const char of text) {
    if (count === max) return text.slice(0, index);
    count += 1;
    index += char.length;
  }
  return text;
}

/** How `cleanMetadata` treats keys. */
export interface CleanOptions {
  /** Whether the value under `key` (at any depth) must be replaced by `"[redacted]"`. */
  redact?: (key: string) => boolean;
}

interface Walk {
  /** Values that may still be emitted; one more is kept for the truncation marker. */
  left: number;
  /** Whether the truncation marker was placed. */
  marked: boolean;
  /** The containers being walked, to spot cycles. */
  ancestors: Set<object>;
  redact: ((key: string) => boolean) | undefined;
}

/** What `visit` returns for a value JSON leaves out (functions, symbols, `undefined`). */
const DROP: unique symbol = Symbol('drop');

/** A JSON object the server accepts, made from anything: dates become ISO strings,
 * BigInts and integers beyond ±(2^53 − 1) strings, NaN and ±Infinity `null`, functions,
 * symbols and `undefined` are dropped, cycles become `"[cycle]"`, containers nested
 * deeper than 32 levels `"[truncated]"`, and after 4,096 values the rest is cut with a
 * `"[truncated]"` marker. Keys and strings are cleaned as `cleanText`. A non-object is
 * kept under `value`; if the result is still over 64 KiB of JSON, a summary replaces it. */
export function cleanMetadata(value: unknown, options: CleanOptions = {}): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  const walk: Walk = {
    // The root and the truncation marker are values too.
    left: METADATA_VALUES - 2,
    marked: false,
    ancestors: new Set(),
    redact: options.redact,
  };
  let root: unknown;
  try {
    root = visit(isRecordLike(value) ? value : { value }, 1, walk);
  } catch {
    return { unreadable: true };
  }
  const out = isPlainRecord(root) ? root : {};
  const bytes = Buffer.byteLength(JSON.stringify(out), 'utf8');
  if (bytes > METADATA_BYTES) {
    return { truncated: true, bytes, keys: Object.keys(out).slice(0, 64).map((k) => truncate(k, 64)) };
  }
  return out;
}

function isRecordLike(value: unknown): value is object {
  try {
    return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
  } catch {
    return false; // a revoked proxy
  }
}

function isPlainRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `value` cleaned, at nesting `depth` (the root object is 1); it has been counted. */
function visit(value: unknown, depth: number, walk: Walk): unknown {
  switch (typeof value) {
    case 'string':
      return cleanText(value, METADATA_STRING);
    case 'number':
      if (!Number.isFinite(value)) return null;
      return Number.isInteger(value) && Math.abs(value) > SAFE_INTEGER ? String(value) : value;
    case 'bigint':
      return value >= -SAFE_INTEGER && value <= SAFE_INTEGER ? Number(value) : value.toString();
    case 'boolean':
      return value;
    case 'undefined':
    case 'function':
    case 'symbol':
      return DROP;
    default:
      break;
  }
  if (value === null) return null;
  const object = value as object;
  if (walk.ancestors.has(object)) return CYCLE;
  walk.ancestors.add(object);
  try {
    if (object instanceof Date) {
      return Number.isNaN(object.getTime()) ? null : object.toISOString();
    }
    if (depth > METADATA_DEPTH) return TRUNCATED;
    // Lists are read lazily, so that a sparse array of length 2^31 or a typed array of
    // millions costs no more than the values kept.
    if (Array.isArray(object) || ArrayBuffer.isView(object)) {
      return visitList(indexed(object as unknown as ArrayLike<unknown>), depth, walk);
    }
    if (object instanceof Set) return visitList(object.values(), depth, walk);
    if (object instanceof ArrayBuffer) return `[${object.byteLength} bytes]`;
    return visitRecord(entriesOf(object), depth, walk);
  } catch {
    return '[unreadable]'; // a throwing getter, `toJSON` or proxy
  } finally {
    walk.ancestors.delete(object);
  }
}

function* indexed(list: ArrayLike<unknown>): Generator<unknown> {
  const length = typeof list.length === 'number' ? list.length : 0;
  for (let i = 0; i < length; i += 1) yield list[i];
}

function* mapEntries(map: Map<unknown, unknown>): Generator<[string, unknown]> {
  for (const [key, item] of map) yield [toText(key), item];
}

function entriesOf(object: object): Iterable<[string, unknown]> {
  if (object instanceof Map) return mapEntries(object);
  if (object instanceof Error) {
    return [['name', object.name], ['message', object.message]];
  }
  const toJSON: unknown = Reflect.get(object, 'toJSON');
  if (typeof toJSON === 'function') {
    const json: unknown = toJSON.call(object);
    if (json !== object) return [['value', json]];
  }
  const record = object as Record<string, unknown>;
  return Object.keys(object).map((key): [string, unknown] => {
    try {
      return [key, record[key]];
    } catch {
      return [key, '[unreadable]'];
    }
  });
}

function visitList(items: Iterable<unknown>, depth: number, walk: Walk): unknown[] | string {
  const out: unknown[] = [];
  for (const item of items) {
    if (walk.left <= 0) {
      if (!walk.marked) {
        walk.marked = true;
        out.push(TRUNCATED);
      }
      break;
    }
    walk.left -= 1;
    const cleaned = visit(item, depth + 1, walk);
    out.push(cleaned === DROP ? null : cleaned); // JSON writes a dropped item as null
  }
  return out;
}

function visitRecord(entries: Iterable<[string, unknown]>, depth: number, walk: Walk): Record<string, unknown> {
  const out: Array<[string, unknown]> = [];
  for (const [rawKey, item] of entries) {
    if (walk.left <= 0) {
      if (!walk.marked) {
        walk.marked = true;
        out.push([TRUNCATED, TRUNCATED]);
      }
      break;
    }
    const key = cleanText(rawKey, METADATA_KEY);
    walk.left -= 1;
    if (walk.redact?.(rawKey)) {
      out.push([key, '[redacted]']);
      continue;
    }
    const cleaned = visit(item, depth + 1, walk);
    if (cleaned === DROP) {
      walk.left += 1;
    } else {
      out.push([key, cleaned]);
    }
  }
  // fromEntries defines own properties, so a `__proto__` key stays a key.
  return Object.fromEntries(out);
}

const ACTION = /^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*){1,3}$/;

/** Whether `action` is what the server takes: 2 to 4 dot-separated `[a-z][a-z0-9_]*`
 * segments, at most 128 characters. */
export function isValidAction(action: unknown): action is string {
  return typeof action === 'string' && action.length <= 128 && ACTION.test(action);
}

/** Throws a `TypeError` when `action` is not valid: integrations check it when they are
 * set up, so that a typo fails at start-up rather than losing every event. */
export function assertAction(action: unknown, where: string): asserts action is string {
  if (!isValidAction(action)) {
    throw new TypeError(
      `${where}: action ${JSON.stringify(action)} must be 2 to 4 dot-separated lower-case segments like "project.created"`,
    );
  }
}
