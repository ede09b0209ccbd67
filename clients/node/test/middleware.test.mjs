// The Express middleware against the real server: examples/express-service.mjs as a child
// process (fail-open and fail-closed), and in-test apps on Express 5 and Express 4.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';

import express5 from 'express';
import express4 from 'express4';

import { auditMiddleware, createAuditClient, fromParam } from '../dist/index.js';
import { startExample, waitForEvents } from './helpers.mjs';
import { Server } from './server.mjs';

const run = randomUUID();
let server;
let service;

before(async () => {
  server = await Server.start();
  service = await startExample('express-service.mjs', server.url, {}, ['--max-http-header-size=65536']);
});

after(async () => {
  assert.equal(await service?.stop(), 0, 'the service exits cleanly on SIGTERM');
  await server?.stop();
});

/** A request written byte for byte (header text as Latin-1), as no HTTP client sends
 * control bytes; resolves with the status, the headers and the body. */
function raw(base, method, path, headers, body = '') {
  const { hostname, port } = new URL(base);
  const head = [`${method} ${path} HTTP/1.1`, `host: ${hostname}:${port}`, 'connection: close'];
  for (const [name, value] of Object.entries({ ...headers, 'content-length': Buffer.byteLength(body) })) {
    head.push(`${name}: ${value}`);
  }
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => {
      socket.write(Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'));
      socket.end(body);
    });
    const chunks = [];
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const [top, ...rest] = text.split('\r\n\r\n');
      const [statusLine, ...lines] = top.split('\r\n');
      const parsed = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        parsed[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers: parsed, text: rest.join('\r\n\r\n') });
    });
  });
}

function post(base, path, body, headers = {}) {
  return fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

describe('express-service.mjs (fail-open)', () => {
  test('201: SUCCESS with actor, target from the response, metadata and context', async () => {
    const user = `alice-${run}`;
    const requestId = `req-${randomUUID()}`;
    const response = await post(service.base, '/projects', { name: 'Apollo' }, {
      'x-user-id': user,
      'x-request-id': requestId,
      'user-agent': 'middleware-test/1.0',
    });
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('x-request-id'), requestId, 'the request id is echoed');
    const { id } = await response.json();
    const [event, ...more] = await waitForEvents(server, { requestId });
    assert.equal(more.length, 0);
    assert.equal(event.action, 'project.created');
    assert.equal(event.outcome, 'SUCCESS');
    assert.equal(event.reason, null);
    assert.deepEqual(event.actor, { type: 'USER', id: user, name: null });
    assert.deepEqual(event.target, { type: 'project', id, name: null });
    assert.deepEqual(event.metadata, { name: 'Apollo' });
    assert.equal(event.context.ipAddress, '127.0.0.1');
    assert.equal(event.context.userAgent, 'middleware-test/1.0');
    assert.equal(event.context.requestId, requestId);
  });

  test('a request without x-request-id gets one, echoed and recorded', async () => {
    const user = `carol-${run}`;
    const response = await post(service.base, '/projects', { name: 'Gemini' }, { 'x-user-id': user });
    assert.equal(response.status, 201);
    const requestId = response.headers.get('x-request-id');
    assert.match(requestId, /^[0-9a-f-]{36}$/);
    const [event] = await waitForEvents(server, { requestId });
    assert.equal(event?.actor.id, user);
  });

  test('204 SUCCESS and 404 FAILURE "HTTP 404" on DELETE', async () => {
    const user = `bob-${run}`;
    const created = await (await post(service.base, '/projects', { name: 'Mercury' }, { 'x-user-id': user })).json();
    const deleted = await fetch(`${service.base}/projects/${created.id}`, {
      method: 'DELETE',
      headers: { 'x-user-id': user, 'x-request-id': `del-${created.id}` },
    });
    assert.equal(deleted.status, 204);
    const missing = `missing-${randomUUID()}`;
    const notFound = await fetch(`${service.base}/projects/${missing}`, {
      method: 'DELETE',
      headers: { 'x-user-id': user, 'x-request-id': `del-${missing}` },
    });
    assert.equal(notFound.status, 404);

    const [ok] = await waitForEvents(server, { requestId: `del-${created.id}` });
    assert.equal(ok.action, 'project.deleted');
    assert.equal(ok.outcome, 'SUCCESS');
    assert.deepEqual(ok.target, { type: 'project', id: created.id, name: null });
    const [failed] = await waitForEvents(server, { requestId: `del-${missing}` });
    assert.equal(failed.action, 'project.deleted');
    assert.equal(failed.outcome, 'FAILURE');
    assert.equal(failed.reason, 'HTTP 404');
    assert.deepEqual(failed.target, { type: 'project', id: missing, name: null });
    assert.deepEqual(failed.actor, { type: 'USER', id: user, name: null });
  });

  test('the decorated archive method records with the request\'s actor and context', async () => {
    const user = `dave-${run}`;
    const created = await (await post(service.base, '/projects', { name: 'Vostok' }, { 'x-user-id': user })).json();
    const requestId = `arch-${created.id}`;
    const archived = await post(service.base, `/projects/${created.id}/archive`, {}, {
      'x-user-id': user,
      'x-request-id': requestId,
    });
    assert.equal(archived.status, 200);
    assert.equal((await archived.json()).archived, true);
    const [event] = await waitForEvents(server, { requestId });
    assert.equal(event.action, 'project.archived');
    assert.equal(event.outcome, 'SUCCESS');
    assert.deepEqual(event.actor, { type: 'USER', id: user, name: null });
    assert.deepEqual(event.target, { type: 'project', id: created.id, name: null });
    assert.equal(event.context.ipAddress, '127.0.0.1');

    const missing = `missing-${randomUUID()}`;
    const notFound = await post(service.base, `/projects/${missing}/archive`, {}, {
      'x-user-id': user,
      'x-request-id': `arch-${missing}`,
    });
    assert.equal(notFound.status, 404);
    const [failed] = await waitForEvents(server, { requestId: `arch-${missing}` });
    assert.equal(failed.outcome, 'FAILURE');
    assert.equal(failed.reason, `no project ${missing}`);
    assert.equal(failed.actor.id, user);
  });

  test('hostile values are recorded cleaned, and the service keeps answering', async () => {
    const agent = `hostile-agent ${'x'.repeat(16 * 1024)}`;
    // 0x85 and 0x9b reach the app as C1 control characters; a tab passes HTTP too.
    const user = `mallory-${run}\x85\x9b\tend`;
    let nested = '{"big": 123456789012345678901234567890, "n": 9007199254740993}';
    for (let i = 0; i < 100; i += 1) nested = `{"level": ${i}, "deeper": ${nested}}`;
    const body = `{"name": ${nested}}`;
    const response = await raw(service.base, 'POST', '/projects', {
      'content-type': 'application/json',
      'user-agent': agent,
      'x-user-id': user,
      'x-request-id': 'bad\x85id\x9b',
    }, body);
    assert.equal(response.status, 201);
    const requestId = response.headers['x-request-id'];
    assert.match(requestId, /^[0-9a-f-]{36}$/, 'an unusable request id is replaced');
    const [event] = await waitForEvents(server, { requestId });
    assert.ok(event, 'the hostile request was recorded');
    assert.equal(event.actor.id, `mallory-${run}\ufffd\ufffd\ufffdend`);
    assert.equal([...event.context.userAgent].length, 1024);
    assert.ok(event.context.userAgent.startsWith('hostile-agent xxx'));
    const text = JSON.stringify(event.metadata);
    assert.ok(text.includes('"[truncated]"'), 'nesting past 32 levels is cut');
    let depth = 0;
    for (let node = event.metadata; typeof node === 'object' && node !== null; depth += 1) {
      node = node.name ?? node.deeper;
    }
    assert.ok(depth <= 32, `metadata nests ${depth} levels`);

    // The big integers: a shallow body keeps them, as strings.
    const shallow = '{"name": {"big": 123456789012345678901234567890, "n": -9007199254740993, "ok": 42}}';
    const second = await raw(service.base, 'POST', '/projects', {
      'content-type': 'application/json',
      'x-user-id': `mallory-${run}`,
      'x-request-id': `big-${run}`,
    }, shallow);
    assert.equal(second.status, 201);
    const [big] = await waitForEvents(server, { requestId: `big-${run}` });
    assert.equal(typeof big.metadata.name.big, 'string');
    assert.equal(typeof big.metadata.name.n, 'string');
    assert.equal(big.metadata.name.ok, 42);

    const after = await post(service.base, '/projects', { name: 'still here' }, { 'x-user-id': `erin-${run}` });
    assert.equal(after.status, 201);
  });
});

describe('in-test apps on Express 5 and Express 4', () => {
  for (const [major, express] of [['express 5', express5], ['express 4', express4]]) {
    test(`${major}: 401 and 403 are DENIED, a throw is FAILURE "HTTP 500", no user is anonymous`, async () => {
      const audit = createAuditClient({ url: server.url, deadLetterFile: false });
      const app = express();
      app.set('env', 'test'); // no stack traces on the console for the throwing route
      app.use(express.json());
      const actor = (req) => req.headers['x-user-id'];
      app.post('/login', auditMiddleware(audit, { action: 'session.login', actor }), (_req, res) => {
        res.status(401).json({ error: 'bad password' });
      });
      app.delete(
        '/roles/:id',
        auditMiddleware(audit, { action: 'role.deleted', actor, target: fromParam('id', 'role') }),
        (_req, res) => {
          res.status(403).json({ error: 'forbidden' });
        },
      );
      app.get('/boom', auditMiddleware(audit, { action: 'settings.updated', actor }), () => {
        throw new Error('boom');
      });
      const listener = app.listen(0, '127.0.0.1');
      await new Promise((resolve) => listener.once('listening', resolve));
      const base = `http://127.0.0.1:${listener.address().port}`;
      const id = randomUUID();
      try {
        const login = await fetch(`${base}/login`, {
          method: 'POST',
          headers: { 'x-user-id': `u-${id}`, 'x-request-id': `login-${id}` },
        });
        assert.equal(login.status, 401);
        const role = await fetch(`${base}/roles/r-${id}`, {
          method: 'DELETE',
          headers: { 'x-user-id': `u-${id}`, 'x-request-id': `role-${id}` },
        });
        assert.equal(role.status, 403);
        const boom = await fetch(`${base}/boom`, { headers: { 'x-request-id': `boom-${id}` } });
        assert.equal(boom.status, 500);

        const [denied] = await waitForEvents(server, { requestId: `login-${id}` });
        assert.equal(denied.action, 'session.login');
        assert.equal(denied.outcome, 'DENIED');
        assert.equal(denied.actor.id, `u-${id}`);
        const [forbidden] = await waitForEvents(server, { requestId: `role-${id}` });
        assert.equal(forbidden.outcome, 'DENIED');
        assert.deepEqual(forbidden.target, { type: 'role', id: `r-${id}`, name: null });
        const [failed] = await waitForEvents(server, { requestId: `boom-${id}` });
        assert.equal(failed.outcome, 'FAILURE');
        assert.equal(failed.reason, 'HTTP 500');
        assert.deepEqual(failed.actor, { type: 'USER', id: 'anonymous', name: null });
      } finally {
        listener.close();
        await audit.shutdown({ deadline: 5000 });
      }
    });

    test(`${major}: fail-closed answers 503 when the sink refuses, and releases when it accepts`, async () => {
      let accept = false;
      const sent = [];
      const sink = {
        async send(event) {
          sent.push(event);
          if (!accept) throw new Error('audit server down');
          return { id: 'x', sequence: '1', hash: 'h', occurredAt: new Date().toISOString() };
        },
        enqueue: () => Promise.reject(new Error('unused')),
      };
      const app = express();
      app.post('/things/:id', auditMiddleware(sink, {
        action: 'project.updated',
        target: fromParam('id', 'project'),
        failClosed: true,
      }), (_req, res) => {
        res.setHeader('x-secret-header', 'leak');
        res.status(200).json({ ok: true });
      });
      const listener = app.listen(0, '127.0.0.1');
      await new Promise((resolve) => listener.once('listening', resolve));
      const base = `http://127.0.0.1:${listener.address().port}`;
      try {
        const refused = await fetch(`${base}/things/t1`, { method: 'POST', headers: { 'x-request-id': 'r1' } });
        assert.equal(refused.status, 503);
        assert.equal(refused.headers.get('x-audit-status'), 'not-audited');
        assert.equal(refused.headers.get('x-request-id'), 'r1');
        assert.equal(refused.headers.get('x-secret-header'), null, 'the handler\'s headers are dropped');
        assert.deepEqual(await refused.json(), { error: 'not audited' });
        accept = true;
        const released = await fetch(`${base}/things/t2`, { method: 'POST' });
        assert.equal(released.status, 200);
        assert.equal(released.headers.get('x-secret-header'), 'leak');
        assert.deepEqual(await released.json(), { ok: true });
        assert.equal(sent.length, 2);
        assert.deepEqual(sent[1].target, { type: 'project', id: 't2' });
        assert.equal(sent[1].outcome, 'SUCCESS');
      } finally {
        listener.close();
      }
    });
  }
});

describe('express-service.mjs (FAIL_CLOSED=1)', () => {
  let closed;
  before(async () => {
    closed = await startExample('express-service.mjs', server.url, {
      FAIL_CLOSED: '1',
      AUDIT_SEND_TIMEOUT_MS: '1000',
    });
  });
  after(async () => {
    assert.equal(await closed?.stop(), 0);
  });

  test('with the server up, the event is stored before the response', async () => {
    const user = `frank-${run}`;
    const requestId = `fc-${randomUUID()}`;
    const response = await post(closed.base, '/projects', { name: 'Skylab' }, {
      'x-user-id': user,
      'x-request-id': requestId,
    });
    assert.equal(response.status, 201);
    const { id } = await response.json();
    const events = await server.events({ requestId }); // no waiting: it is already there
    assert.equal(events.length, 1);
    assert.equal(events[0].outcome, 'SUCCESS');
    assert.deepEqual(events[0].target, { type: 'project', id, name: null });
    assert.deepEqual(events[0].actor, { type: 'USER', id: user, name: null });

    const missing = `missing-${randomUUID()}`;
    const notFound = await fetch(`${closed.base}/projects/${missing}`, {
      method: 'DELETE',
      headers: { 'x-request-id': `fc-${missing}` },
    });
    assert.equal(notFound.status, 404);
    const [failed] = await server.events({ requestId: `fc-${missing}` });
    assert.equal(failed?.reason, 'HTTP 404');
  });

  test('with the server down, 503 and x-audit-status: not-audited', async () => {
    server.kill();
    try {
      const response = await post(closed.base, '/projects', { name: 'Salyut' }, { 'x-user-id': `gina-${run}` });
      assert.equal(response.status, 503);
      assert.equal(response.headers.get('x-audit-status'), 'not-audited');
      assert.deepEqual(await response.json(), { error: 'not audited' });
    } finally {
      await server.start();
    }
    const again = await post(closed.base, '/projects', { name: 'Mir' }, { 'x-user-id': `gina-${run}` });
    assert.equal(again.status, 201, 'answers again once the server is back');
  });
});
