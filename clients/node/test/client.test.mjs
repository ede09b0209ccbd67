// The client against the real server: helpers stored field by field, send(), enqueue()'s
// refusals, a refused event isolated from its batch, the buffer's policies, paging and
// the live tail across a restart.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  BufferFullError,
  CONTRACT,
  InvalidEventError,
  createAuditClient,
  configureAudit,
  logProjectAction,
  logAuditEvent,
} from '../dist/index.js';
import { Server, freePort } from './server.mjs';

let server;
before(async () => {
  server = await Server.start();
});
after(() => server.stop());

const scratch = () => mkdtempSync(join(tmpdir(), 'audit-kit-'));

function client(options = {}) {
  return createAuditClient({ url: server.url, deadLetterFile: join(scratch(), 'dead.jsonl'), ...options });
}

const camel = (name) => name.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());

test('every helper of the catalog records its action, target and outcome', async () => {
  const audit = client({ actor: { type: 'SERVICE', id: 'api-gateway', name: 'API gateway' } });
  const run = randomUUID();
  const keys = new Map();
  for (const entry of CONTRACT.catalog) {
    const family = camel(entry.family);
    const helper = audit[family][camel(entry.helper)];
    assert.equal(typeof helper, 'function', `${family}.${camel(entry.helper)}`);
    const key = await helper({
      [family]: { id: `${run}-${entry.action}`, name: 'Thing' },
      metadata: { run, n: 1 },
      context: { requestId: `req-${run}`, ipAddress: '10.1.2.3', userAgent: 'kit-test' },
    });
    keys.set(key, entry);
  }
  const report = await audit.flush();
  assert.equal(report.undelivered, 0);
  const stored = await server.events({ requestId: `req-${run}` });
  assert.equal(stored.length, CONTRACT.catalog.length);
  for (const event of stored) {
    const entry = keys.get(event.idempotencyKey);
    assert.ok(entry, `stored under a key enqueue() returned: ${event.idempotencyKey}`);
    assert.equal(event.action, entry.action);
    assert.deepEqual(event.actor, { type: 'SERVICE', id: 'api-gateway', name: 'API gateway' });
    assert.deepEqual(event.target, { type: entry.targetType, id: `${run}-${entry.action}`, name: 'Thing' });
    assert.equal(event.outcome, entry.outcome ?? 'SUCCESS');
    assert.deepEqual(event.metadata, { run, n: 1 });
    assert.deepEqual(event.context, { ipAddress: '10.1.2.3', userAgent: 'kit-test', requestId: `req-${run}`, traceId: null });
  }
  await audit.shutdown();
});

test('the audit-logs names record through the default client', async () => {
  configureAudit({ url: server.url, deadLetterFile: false });
  const run = randomUUID();
  const created = await logProjectAction.created({ actor: 'u-7', project: run, metadata: { name: 'Apollo' } });
  const failed = await logAuditEvent({ action: 'session.login_failed', actor: 'u-7', outcome: 'FAILURE', reason: 'bad password', target: { type: 'project', id: run } });
  const { getDefaultClient } = await import('../dist/index.js');
  await getDefaultClient().shutdown();
  const stored = await server.events({ targetType: 'project', targetIds: [run] });
  assert.deepEqual(stored.map((e) => [e.idempotencyKey, e.action, e.outcome, e.actor.id, e.reason]).sort(), [
    [created, 'project.created', 'SUCCESS', 'u-7', null],
    [failed, 'session.login_failed', 'FAILURE', 'u-7', 'bad password'],
  ].sort());
});

test('send() resolves with the event as committed', async () => {
  const audit = client();
  const key = randomUUID();
  const recorded = await audit.send({ action: 'role.assigned', actor: 'u-1', target: { type: 'role', id: 'admin' }, idempotencyKey: key });
  const [stored] = await server.events({ targetType: 'role', targetIds: ['admin'], actorIds: ['u-1'] }).then((all) => all.filter((e) => e.idempotencyKey === key));
  assert.equal(recorded.id, stored.id);
  assert.equal(recorded.sequence, stored.sequence);
  assert.equal(recorded.occurredAt, stored.occurredAt);
  assert.match(recorded.hash, /^[0-9a-f]{64}$/);
  await assert.rejects(audit.send({ action: 'Bad', actor: 'u-1' }), { code: 'BAD_USER_INPUT', field: 'action' });
  await audit.shutdown();
});

test('enqueue() refuses a bad event at once, with its field, and never leaves an unhandled rejection', async () => {
  const errors = [];
  const audit = client({ onError: (error) => errors.push(error) });
  const unhandled = [];
  const onUnhandled = (reason) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  audit.enqueue({ action: 'project.created', actor: 'u', metadata: { n: 2 ** 60 } }); // ignored
  await assert.rejects(audit.enqueue({ action: 'project.created' }), (error) => error instanceof InvalidEventError && error.field === 'actor');
  await assert.rejects(audit.enqueue({ action: 'project.created', actor: '\u0000' }), { field: 'actor.id' });
  await new Promise((resolve) => setTimeout(resolve, 50));
  process.off('unhandledRejection', onUnhandled);
  assert.deepEqual(unhandled, []);
  assert.deepEqual(errors.map((e) => e.field), ['metadata', 'actor', 'actor.id']);
  assert.equal(audit.metrics().enqueued, 0);
  await audit.shutdown();
});

test('an event the server refuses is dead-lettered and the rest of its batch delivered', async () => {
  const run = randomUUID();
  const taken = randomUUID();
  const first = client();
  await first.send({ action: 'project.created', actor: 'u-1', idempotencyKey: taken });
  await first.shutdown();

  const dir = scratch();
  const errors = [];
  const audit = client({ deadLetterFile: join(dir, 'dead.jsonl'), onError: (e) => errors.push(e) });
  const keys = [];
  for (let i = 0; i < 10; i += 1) {
    // The fifth reuses a key for another event: IDEMPOTENCY_CONFLICT, for that event only.
    const idempotencyKey = i === 4 ? taken : `${run}-${i}`;
    keys.push(await audit.enqueue({ action: 'project.updated', actor: 'u-1', target: { type: 'project', id: run }, idempotencyKey }));
  }
  const report = await audit.flush();
  assert.deepEqual(report, { delivered: 9, deadLettered: 1, undelivered: 0 });
  const stored = await server.events({ targetType: 'project', targetIds: [run] });
  assert.deepEqual(stored.map((e) => e.idempotencyKey).sort(), keys.filter((k) => k !== taken).sort());
  const [line, ...rest] = readFileSync(join(dir, 'dead.jsonl'), 'utf8').trim().split('\n');
  assert.equal(rest.length, 0);
  const dead = JSON.parse(line);
  assert.equal(dead.code, 'IDEMPOTENCY_CONFLICT');
  assert.equal(dead.field, 'idempotencyKey');
  assert.equal(dead.event.idempotencyKey, taken);
  assert.deepEqual(errors.map((e) => e.code), ['IDEMPOTENCY_CONFLICT']);
  assert.equal(audit.metrics().deadLettered, 1);
  await audit.shutdown();
});

test('a full buffer drops under `drop` and waits under `wait`', async () => {
  const nowhere = `http://127.0.0.1:${await freePort()}/graphql`;
  const dropping = createAuditClient({ url: nowhere, deadLetterFile: false, maxEvents: 10, onFull: 'drop' });
  for (let i = 0; i < 10; i += 1) await dropping.enqueue({ action: 'project.created', actor: 'u' });
  await assert.rejects(dropping.enqueue({ action: 'project.created', actor: 'u' }), BufferFullError);
  assert.equal(dropping.metrics().dropped, 1);
  assert.deepEqual(await dropping.shutdown({ deadline: 300 }), { delivered: 0, deadLettered: 0, undelivered: 10 });

  const run = randomUUID();
  const waiting = client({ maxEvents: 5 });
  for (let i = 0; i < 60; i += 1) {
    await waiting.enqueue({ action: 'project.created', actor: 'u', target: { type: 'project', id: run } });
    assert.ok(waiting.metrics().buffered <= 5);
  }
  assert.equal((await waiting.shutdown()).delivered, 60);
  assert.equal((await server.events({ targetType: 'project', targetIds: [run] })).length, 60);
});

test('events() walks every page', async () => {
  const audit = client();
  const run = randomUUID();
  for (let i = 0; i < 23; i += 1) audit.enqueue({ action: 'member.added', actor: 'u', target: { type: 'user', id: run }, metadata: { i } });
  await audit.flush();
  const seen = [];
  for await (const event of audit.events({ targetType: 'user', targetIds: [run] }, { pageSize: 5, orderBy: 'OCCURRED_AT_ASC' })) {
    seen.push(event.metadata.i);
  }
  assert.deepEqual(seen.sort((a, b) => a - b), [...Array(23).keys()]);
  await audit.shutdown();
});

test('tail() resumes after the server restarts, with no gap and no duplicate', async () => {
  const audit = client();
  const run = randomUUID();
  const filter = { targetType: 'project', targetIds: [run] };
  const controller = new AbortController();
  const seen = [];
  const reading = (async () => {
    for await (const event of audit.tail(filter, { signal: controller.signal })) {
      seen.push(event.metadata.i);
      if (seen.length === 10) controller.abort();
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, 500));
  for (let i = 0; i < 5; i += 1) await audit.send({ action: 'project.updated', actor: 'u', target: { type: 'project', id: run }, metadata: { i } });
  for (const deadline = Date.now() + 10_000; seen.length < 5 && Date.now() < deadline; ) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(seen.length, 5);
  server.kill();
  await server.start();
  // Written at once after the restart, before the tail has connected again.
  for (let i = 5; i < 10; i += 1) await audit.send({ action: 'project.updated', actor: 'u', target: { type: 'project', id: run }, metadata: { i } });
  await Promise.race([reading, new Promise((_, reject) => setTimeout(() => reject(new Error(`tail saw ${seen}`)), 20_000))]);
  assert.deepEqual(seen, [...Array(10).keys()]);
  await audit.shutdown();
});

test('what GraphQL checks is checked too: enums, context fields, real dates, every metadata value counted', async () => {
  const audit = client();
  const base = { action: 'project.created', actor: 'u-1' };
  const refusals = [
    [{ ...base, actor: { type: 'user', id: 'u-1' } }, 'actor.type'],
    [{ ...base, outcome: 'success' }, 'outcome'],
    [{ ...base, metadata: { a: Array(5000).fill(null) } }, 'metadata'],
    [{ ...base, metadata: { a: Array(2 ** 31) } }, 'metadata'],
    [{ ...base, metadata: { ['k\ud800']: 1 } }, 'metadata'],
    [{ ...base, occurredAt: '2024-02-30T00:00:00Z' }, 'occurredAt'],
    [{ ...base, occurredAt: '2024-02-01T24:00:00Z' }, 'occurredAt'],
    [{ ...base, occurredAt: '1969-12-31T23:59:59Z' }, 'occurredAt'],
    [{ ...base, context: 'abc' }, 'context'],
  ];
  for (const [event, field] of refusals) {
    await assert.rejects(audit.enqueue(event), { field }, field);
  }
  // A context field the server does not know is left out, not sent.
  const requestId = randomUUID();
  await audit.send({ ...base, context: { requestId, spanId: 'x' }, occurredAt: '2024-02-29T23:59:59.123456Z' });
  const [stored] = await server.events({ requestId });
  assert.equal(stored.occurredAt, '2024-02-29T23:59:59.123456Z');
  await audit.shutdown();
});

/** A stand-in for audit-service that refuses, without naming an event, any request that
 * holds the word `poison`, and acknowledges the rest. */
async function poisonServer() {
  const { createServer } = await import('node:http');
  const requests = [];
  const fake = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      const { variables } = JSON.parse(body);
      requests.push(variables.inputs.length);
      res.setHeader('content-type', 'application/json');
      if (body.includes('poison')) {
        res.end(JSON.stringify({ errors: [{ message: 'refused', extensions: { code: 'BAD_USER_INPUT' } }] }));
      } else {
        res.end(JSON.stringify({ data: { logAuditEvents: variables.inputs.map((_, i) => ({ id: String(i) })) } }));
      }
    });
  });
  await new Promise((resolve) => fake.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${fake.address().port}/graphql`, requests, close: () => fake.close() };
}

test('a batch refused without naming its culprit is halved until the culprit is found, and the rest delivered', async () => {
  const fake = await poisonServer();
  const errors = [];
  const audit = createAuditClient({ url: fake.url, deadLetterFile: false, onError: (e) => errors.push(e.code) });
  for (let i = 0; i < 64; i += 1) {
    audit.enqueue({ action: 'project.created', actor: 'u', metadata: { word: i === 37 ? 'poison' : 'fine' } });
  }
  assert.deepEqual(await audit.flush({ deadline: 10_000 }), { delivered: 63, deadLettered: 1, undelivered: 0 });
  assert.deepEqual(errors, ['BAD_USER_INPUT']);
  // 64 → 32 → 16 → 8 → 4 → 2 → 1: two requests per level at most, and the first.
  assert.ok(fake.requests.length <= 1 + 2 * 6, `${fake.requests.length} requests: ${fake.requests}`);
  await audit.shutdown();
  fake.close();
});

test('a damaged spool: a line that is not an event is dead-lettered, a bad acknowledgement replays everything', async () => {
  const { appendFileSync, writeFileSync } = await import('node:fs');
  const dir = scratch();
  const nowhere = `http://127.0.0.1:${await freePort()}/graphql`;
  const run = randomUUID();
  const first = createAuditClient({ url: nowhere, spool: { dir }, deadLetterFile: false });
  const keys = [];
  for (let i = 0; i < 5; i += 1) keys.push(await first.enqueue({ action: 'project.created', actor: 'u', target: { type: 'project', id: run } }));
  assert.equal((await first.shutdown({ deadline: 0 })).undelivered, 5);
  appendFileSync(join(dir, 'spool-000001.jsonl'), 'not an event\n');
  writeFileSync(join(dir, 'spool.ack'), '999999 0');

  const errors = [];
  const second = createAuditClient({ url: server.url, spool: { dir }, onError: (e) => errors.push(e.code) });
  assert.deepEqual(await second.flush(), { delivered: 5, deadLettered: 1, undelivered: 0 });
  assert.deepEqual(errors, ['SPOOL_DAMAGED']);
  assert.deepEqual((await server.events({ targetType: 'project', targetIds: [run] })).map((e) => e.idempotencyKey).sort(), keys.sort());
  await second.shutdown();
});

test('shutdown refuses the events still waiting for room, and a token that never comes times out', async () => {
  const nowhere = `http://127.0.0.1:${await freePort()}/graphql`;
  const audit = createAuditClient({ url: nowhere, deadLetterFile: false, maxEvents: 2 });
  const waiting = [];
  for (let i = 0; i < 4; i += 1) waiting.push(audit.enqueue({ action: 'project.created', actor: 'u' }));
  await audit.shutdown({ deadline: 100 });
  const settled = await Promise.allSettled(waiting);
  assert.deepEqual(settled.map((s) => s.status), ['fulfilled', 'fulfilled', 'rejected', 'rejected']);
  assert.equal(settled[2].reason.code, 'CLOSED');

  const stuck = createAuditClient({ url: server.url, token: () => new Promise(() => {}), timeoutMs: 200, sendTimeoutMs: 500, deadLetterFile: false });
  await assert.rejects(stuck.send({ action: 'project.created', actor: 'u' }), { code: 'NETWORK' });
  await stuck.shutdown({ deadline: 0 });
});

test('a write\'s consistency token goes with the same client\'s next reads', async () => {
  const { createServer } = await import('node:http');
  const seen = [];
  let written = 0;
  const fake = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      seen.push(req.headers['x-audit-consistency'] ?? null);
      res.setHeader('content-type', 'application/json');
      if (body.includes('logAuditEvent(')) {
        written += 1;
        // Later writes answer later positions; an older answer arriving late is ignored.
        res.setHeader('x-audit-consistency', written === 2 ? '0/1000' : `0/${written}A0`);
        res.end(JSON.stringify({ data: { logAuditEvent: { id: 'e', sequence: '1', hash: 'h', occurredAt: '2026-01-01T00:00:00Z' } } }));
      } else {
        res.end(JSON.stringify({ data: { auditLogs: { edges: [], pageInfo: { hasNextPage: false, endCursor: null } } } }));
      }
    });
  });
  await new Promise((resolve) => fake.listen(0, '127.0.0.1', resolve));
  const audit = createAuditClient({ url: `http://127.0.0.1:${fake.address().port}/graphql`, deadLetterFile: false });
  for await (const _ of audit.events()) break;
  await audit.send({ action: 'project.created', actor: 'u' });
  for await (const _ of audit.events()) break;
  await audit.send({ action: 'project.created', actor: 'u' });
  await audit.send({ action: 'project.created', actor: 'u' });
  for await (const _ of audit.events()) break;
  assert.deepEqual(seen, [null, null, '0/1A0', '0/1A0', '0/1000', '0/1000']);
  await audit.shutdown();
  fake.close();
});
