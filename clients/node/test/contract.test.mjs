// The kit's rules against contract/cases.json, and the real server against the same
// cases: the kit refuses exactly what the server refuses, at the same field.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { CONTRACT, InvalidEventError, checkInput } from '../dist/index.js';
import { Server } from './server.mjs';

const { cases } = JSON.parse(readFileSync(new URL('../../../contract/cases.json', import.meta.url), 'utf8'));

/** `{"$repeat": s, "times": n, "prefix": p}` and `{"$array": v, "times": n}` written out. */
function expand(value) {
  if (Array.isArray(value)) return value.map(expand);
  if (value === null || typeof value !== 'object') return value;
  if ('$repeat' in value) return (value.prefix ?? '') + value.$repeat.repeat(value.times);
  if ('$array' in value) return Array(value.times).fill(value.$array);
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, expand(v)]));
}

let server;
before(async () => {
  server = await Server.start();
});
after(() => server.stop());

test('the catalog is the contract\'s: 23 actions or more, each a valid action', () => {
  assert.ok(CONTRACT.catalog.length >= 23);
  for (const entry of CONTRACT.catalog) {
    checkInput({ action: entry.action, actor: { type: 'USER', id: 'u' }, occurredAt: new Date().toISOString() });
  }
});

test('the kit refuses every case at the server\'s field, and the server agrees', async () => {
  assert.ok(cases.length >= 50);
  for (const { name, event, field } of cases) {
    const input = expand(event);
    if (field === null && input.idempotencyKey) input.idempotencyKey = randomUUID();
    let refused = null;
    try {
      checkInput({ ...input, occurredAt: new Date().toISOString() });
    } catch (error) {
      assert.ok(error instanceof InvalidEventError, `${name}: ${error}`);
      refused = error.field;
    }
    assert.equal(refused, field, `the kit, on ${name}`);

    const response = await fetch(server.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        query: 'mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }',
        variables: { input },
      }),
    });
    const body = await response.json();
    if (field === null) {
      assert.equal(body.errors, undefined, `the server, on ${name}: ${JSON.stringify(body.errors)}`);
    } else {
      const error = body.errors?.[0];
      assert.equal(error?.extensions?.code, 'BAD_USER_INPUT', `the server, on ${name}`);
      assert.equal(error.extensions.field, `input.${field}`, `the server, on ${name}`);
    }
  }
});

test('an event is stamped with an RFC 3339 time no later than now plus the skew', () => {
  const input = { action: 'project.created', actor: { type: 'USER', id: 'u' } };
  const later = new Date(Date.now() + (CONTRACT.limits.futureSkewSeconds + 60) * 1000).toISOString();
  assert.throws(() => checkInput({ ...input, occurredAt: later }), { field: 'occurredAt' });
  assert.throws(() => checkInput({ ...input, occurredAt: 'yesterday' }), { field: 'occurredAt' });
  checkInput({ ...input, occurredAt: new Date().toISOString() });
});
