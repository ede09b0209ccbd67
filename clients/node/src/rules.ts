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

/** Throws `InvalidEventError` at the first field of `input` that breaks a rule, in the
 * contract's order, as the server would. */
export function checkInput(input: AuditEventInput): void {
  for (const rule of CONTRACT.rules) {
    const value = fieldOf(input, rule.field);
    if (value === undefined || value === null) {
      if (isRequired(input, rule.field)) fail(rule.field, `${rule.field} is missing`);
      continue;
    }
    const max = 'length' in rule ? (LIMITS[rule.length as Limit] as number) : 0;
    switch (rule.rule) {
      case 'action':
        checkAction(value);
        break;
      case 'id':
        checkId(rule.field, value, max);
        break;
      case 'text':
        checkText(rule.field, value, max);
        break;
      case 'metadata':
        checkMetadata(value);
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
  checkOccurredAt(input.occurredAt);
}

function fieldOf(input: AuditEventInput, path: string): unknown {
  let value: unknown = input;
  for (const part of path.split('.')) {
    if (typeof value !== 'object' || value === null) return undefined;
    value = (value as Record<string, unknown>)[part];
  }
  return value;
}

function isRequired(input: AuditEventInput, field: string): boolean {
  return (
    field === 'action' ||
    field === 'actor.id' ||
    (input.target != null && (field === 'target.type' || field === 'target.id'))
  );
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

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

function checkOccurredAt(value: unknown): void {
  const time = typeof value === 'string' && RFC3339.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(time)) fail('occurredAt', 'occurredAt is not an RFC 3339 date-time');
  if (time > Date.now() + LIMITS.futureSkewSeconds * 1000) {
    fail('occurredAt', `occurredAt is more than ${LIMITS.futureSkewSeconds} s in the future`);
  }
}

/** Metadata: a plain JSON object nested at most `metadataDepth` deep, no NUL in keys or
 * strings, at most `metadataValues` values and `metadataBytes` of compact JSON, integers
 * within ±(2^53 - 1). The walk stops at the first broken bound, so a hostile object costs
 * no more than the bounds. */
export function checkMetadata(value: unknown): void {
  if (!isPlainObject(value)) fail('metadata', 'metadata must be a JSON object');
  const seen = new Set<object>();
  let values = 0;
  const walk = (node: unknown, depth: number): void => {
    values += 1;
    if (node === null || node === undefined || typeof node === 'boolean') return;
    if (values > LIMITS.metadataValues) {
      fail('metadata', `metadata holds more than the limit of ${LIMITS.metadataValues} values`);
    }
    if (typeof node === 'string') {
      if (node.includes('\0')) fail('metadata', 'metadata must not contain NUL characters');
      if (!node.isWellFormed()) fail('metadata', 'metadata is not well-formed Unicode');
    } else if (typeof node === 'number') {
      if (!Number.isFinite(node)) fail('metadata', 'metadata numbers must be finite');
      if (Number.isInteger(node) && Math.abs(node) > LIMITS.safeInteger && Math.abs(node) < 1e21) {
        fail('metadata', 'metadata integers must be between -(2^53 - 1) and 2^53 - 1');
      }
    } else if (typeof node === 'object' && node !== null) {
      if (depth >= LIMITS.metadataDepth) {
        fail('metadata', `metadata nests deeper than ${LIMITS.metadataDepth} levels`);
      }
      if (seen.has(node)) fail('metadata', 'metadata refers to itself');
      seen.add(node);
      if (Array.isArray(node)) {
        for (const item of node) walk(item, depth + 1);
      } else if (isPlainObject(node)) {
        for (const [key, item] of Object.entries(node)) {
          if (key.includes('\0')) fail('metadata', 'metadata must not contain NUL characters');
          // JSON leaves out a property whose value is undefined; so does the server.
          if (item !== undefined) walk(item, depth + 1);
        }
      } else {
        fail('metadata', 'metadata must hold JSON values only');
      }
      seen.delete(node);
    } else {
      fail('metadata', `metadata must hold JSON values only, not ${typeof node}`);
    }
  };
  walk(value, 0);
  const size = Buffer.byteLength(JSON.stringify(value));
  if (size > LIMITS.metadataBytes) {
    fail('metadata', `metadata is ${size} bytes, more than the limit of ${LIMITS.metadataBytes}`);
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}
