// The server's event rules, read from the contract (contract/contract.json, which the
// server and the Rust kit are built from), so that an event the server would refuse is
// refused here, before it is sent or spooled, with the same field.

import { isIP } from 'node:net';
import { InvalidEventError } from './errors.js';
import type { AuditEventInput } from './generated/graphql.js';
import { CONTRACT } from './generated/contract.js';

const LIMITS = CONTRACT.limits;
const SEGMENT = new RegExp(CONTRACT.patterns.segment);
const TRACE_ID = new RegExp(CONTRACT.patterns.traceId);
const BLANK = /^\p{White_Space}*$/u;
// What Rust's `char::is_control` is: the Unicode category Cc.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

type Limit = keyof typeof LIMITS;

/** One rule of the contract, compiled: how to read its field, and its length limit. */
interface Compiled {
  field: string;
  rule: string;
  max: number;
  read: (input: AuditEventInput) => unknown;
  required: (input: AuditEventInput) => boolean;
}

const RULES: Compiled[] = CONTRACT.rules.map((rule) => {
  const path = rule.field.split('.');
  return {
    field: rule.field,
    rule: rule.rule,
    max: 'length' in rule ? (LIMITS[rule.length as Limit] as number) : 0,
    read: (input) => {
      let value: unknown = input;
      for (const part of path) {
        if (typeof value !== 'object' || value === null) return undefined;
        value = (value as Record<string, unknown>)[part];
      }
      return value;
    },
    required:
      rule.field === 'action' || rule.field === 'actor.id'
        ? () => true
        : rule.field === 'target.type' || rule.field === 'target.id'
          ? (input) => input.target != null
          : () => false,
  };
});

const ACTOR_TYPES: ReadonlySet<unknown> = new Set(['USER', 'SERVICE', 'SYSTEM']);
const OUTCOMES: ReadonlySet<unknown> = new Set(['SUCCESS', 'FAILURE', 'DENIED']);

/** Throws `InvalidEventError` at the first field of `input` that breaks a rule, in the
 * contract's order, as the server would. */
export function checkInput(input: AuditEventInput): void {
  checkFields(input);
  checkOccurredAt(input.occurredAt);
}

/** `checkInput` but for `occurredAt`, for an input whose time was stamped just now; with
 * `metadataSize: false`, but for the metadata's size too (see `checkMetadata`). */
export function checkFields(input: AuditEventInput, metadataSize = true): void {
  for (const rule of RULES) {
    const value = rule.read(input);
    if (value === undefined || value === null) {
      if (rule.required(input)) fail(rule.field, `${rule.field} is missing`);
      continue;
    }
    switch (rule.rule) {
      case 'action':
        checkAction(value);
        break;
      case 'id':
        checkId(rule.field, value, rule.max);
        break;
      case 'text':
        checkText(rule.field, value, rule.max);
        break;
      case 'metadata':
        checkMetadata(value, metadataSize);
        break;
      case 'ids':
        checkIds(rule.field, value, rule.max);
        break;
      case 'ip':
        if (typeof value !== 'string' || isIP(value) === 0 || value.includes('%')) {
          fail(rule.field, `${rule.field} is not an IPv4 or IPv6 address`);
        }
        break;
      case 'traceId':
        if (typeof value !== 'string' || !TRACE_ID.test(value)) {
          fail(
            rule.field,
            `${rule.field} is not a W3C trace id (32 lower-case hex digits, not all zero)`,
          );
        }
        break;
    }
  }
  // What GraphQL itself checks: the enums.
  if (!ACTOR_TYPES.has(input.actor.type)) fail('actor.type', 'actor.type must be USER, SERVICE or SYSTEM');
  if (input.outcome != null && !OUTCOMES.has(input.outcome)) {
    fail('outcome', 'outcome must be SUCCESS, FAILURE or DENIED');
  }
}

function fail(field: string, message: string): never {
  throw new InvalidEventError(field, message);
}

function checkAction(value: unknown): void {
  const [fewest, most] = LIMITS.actionSegments;
  const segments = typeof value === 'string' ? value.split('.') : [];
  if (
    typeof value !== 'string' ||
    value.length > LIMITS.actionLength ||
    segments.length < fewest ||
    segments.length > most ||
    !segments.every((segment) => SEGMENT.test(segment))
  ) {
    fail(
      'action',
      `action must be ${fewest} to ${most} dot-separated lower-case segments matching ` +
        `[a-z][a-z0-9_]* and at most ${LIMITS.actionLength} characters, like \`project.created\``,
    );
  }
}

function checkId(field: string, value: unknown, max: number): void {
  if (typeof value !== 'string') fail(field, `${field} must be a string`);
  if (BLANK.test(value)) fail(field, `${field} must not be empty`);
  if (CONTROL.test(value)) fail(field, `${field} must not contain control characters`);
  checkLength(field, value, max);
}

/** A list of at most `subjects` ids, each checked as an id at its index: `subjectIds[1]`. */
function checkIds(field: string, value: unknown, max: number): void {
  if (!Array.isArray(value)) fail(field, `${field} must be a list of ids`);
  if (value.length > LIMITS.subjects) {
    fail(field, `${field} names at most ${LIMITS.subjects} data subjects`);
  }
  value.forEach((id, i) => checkId(`${field}[${i}]`, id, max));
}

function checkText(field: string, value: unknown, max: number): void {
  if (typeof value !== 'string') fail(field, `${field} must be a string`);
  if (value.includes('\0')) fail(field, `${field} must not contain NUL characters`);
  checkLength(field, value, max);
}

function checkLength(field: string, value: string, max: number): void {
  // JSON cannot carry a lone surrogate as text the server can read.
  if (!value.isWellFormed()) fail(field, `${field} is not well-formed Unicode`);
  // Characters, as the server counts them: code points, not UTF-16 units.
  if (value.length > max && [...value].length > max) {
    fail(field, `${field} is longer than ${max} characters`);
  }
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

/** An RFC 3339 date-time that is a real instant (no 30 February, no hour 24, no leap
 * second), from 1970 on, at most the allowed skew into the future. */
export function checkOccurredAt(value: unknown): void {
  const parts = typeof value === 'string' ? RFC3339.exec(value) : null;
  if (parts === null) fail('occurredAt', 'occurredAt is not an RFC 3339 date-time');
  const [year, month, day, hour, minute, second] = parts.slice(1, 7).map(Number) as number[];
  const civil = new Date(Date.UTC(year ?? 0, (month ?? 0) - 1, day, hour, minute, second));
  if (
    civil.getUTCFullYear() !== year ||
    civil.getUTCMonth() + 1 !== month ||
    civil.getUTCDate() !== day ||
    civil.getUTCHours() !== hour ||
    civil.getUTCMinutes() !== minute ||
    civil.getUTCSeconds() !== second
  ) {
    fail('occurredAt', 'occurredAt is not a real date and time');
  }
  const time = Date.parse(value as string);
  if (!(time >= 0)) fail('occurredAt', 'occurredAt is before 1970');
  if (time > Date.now() + LIMITS.futureSkewSeconds * 1000) {
    fail('occurredAt', `occurredAt is more than ${LIMITS.futureSkewSeconds} s in the future`);
  }
}

/** Metadata: a plain JSON object nested at most `metadataDepth` deep, no NUL in keys or
 * strings, at most `metadataValues` values and `metadataBytes` of compact JSON, integers
 * within ±(2^53 - 1). The walk stops at the first broken bound, so a hostile object (a
 * sparse array of length 2^31, a cycle, a diamond of shared objects) costs no more than
 * the bounds. `size: false` leaves the size to `checkMetadataSize`, for a caller that
 * knows the whole event's JSON is smaller than the limit. */
export function checkMetadata(value: unknown, size = true): void {
  if (!isPlainObject(value)) fail('metadata', 'metadata must be a JSON object');
  walkMetadata(value, 0, { values: 0 });
  if (size) checkMetadataSize(value);
}

/** The size rule of metadata alone. */
export function checkMetadataSize(value: unknown): void {
  const size = Buffer.byteLength(JSON.stringify(value));
  if (size > LIMITS.metadataBytes) {
    fail('metadata', `metadata is ${size} bytes, more than the limit of ${LIMITS.metadataBytes}`);
  }
}

function walkMetadata(node: unknown, depth: number, count: { values: number }): void {
  count.values += 1;
  if (count.values > LIMITS.metadataValues) {
    fail('metadata', `metadata holds more than the limit of ${LIMITS.metadataValues} values`);
  }
  switch (typeof node) {
    case 'boolean':
    case 'undefined':
      return;
    case 'string':
      if (node.includes('\0')) fail('metadata', 'metadata must not contain NUL characters');
      if (!node.isWellFormed()) fail('metadata', 'metadata is not well-formed Unicode');
      return;
    case 'number':
      if (!Number.isFinite(node)) fail('metadata', 'metadata numbers must be finite');
      if (Number.isInteger(node) && Math.abs(node) > LIMITS.safeInteger && Math.abs(node) < 1e21) {
        fail('metadata', 'metadata integers must be between -(2^53 - 1) and 2^53 - 1');
      }
      return;
    case 'object':
      break;
    default:
      fail('metadata', `metadata must hold JSON values only, not ${typeof node}`);
  }
  if (node === null) return;
  // A cycle ends here too, as nesting too deep.
  if (depth >= LIMITS.metadataDepth) {
    fail('metadata', `metadata nests deeper than ${LIMITS.metadataDepth} levels (or refers to itself)`);
  }
  if (Array.isArray(node)) {
    for (const item of node) walkMetadata(item, depth + 1, count);
  } else if (isPlainObject(node)) {
    for (const key in node) {
      if (!Object.hasOwn(node, key)) continue;
      if (key.includes('\0')) fail('metadata', 'metadata must not contain NUL characters');
      if (!key.isWellFormed()) fail('metadata', 'metadata is not well-formed Unicode');
      const item = node[key];
      // JSON leaves out a property whose value is undefined; so does the server.
      if (item !== undefined) walkMetadata(item, depth + 1, count);
    }
  } else {
    fail('metadata', 'metadata must hold JSON values only');
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}
