// The `Audited` decorator, compiled both ways (test/build/standard with ECMAScript
// decorators, test/build/experimental with experimentalDecorators), against the real server.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { createAuditClient, runWithAudit } from '../dist/index.js';
import { waitForEvents } from './helpers.mjs';
import { Server } from './server.mjs';

const run = randomUUID();
let server;
let client;

before(async () => {
  server = await Server.start();
  client = createAuditClient({ url: server.url, deadLetterFile: false });
});

after(async () => {
  await client?.shutdown({ deadline: 5000 });
  await server?.stop();
});

for (const kind of ['standard', 'experimental']) {
  describe(`${kind} decorators`, () => {
    let fixture;
    let service;
    before(async () => {
      fixture = await import(`./build/${kind}/decorated.js`);
      service = fixture.build(client);
    });

    const scope = (requestId) => ({
      actor: { type: 'USER', id: `user-${run}` },
      context: { requestId, ipAddress: '10.1.2.3' },
    });

    test('sync: the value is returned unchanged, SUCCESS with the scope\'s actor', async () => {
      const requestId = `${kind}-sync-${randomUUID()}`;
      const id = `p-${randomUUID()}`;
      const before = service.calls;
      const result = runWithAudit(scope(requestId), () => service.rename(id, 'Renamed'));
      assert.deepEqual(result, { id, name: 'Renamed', calls: before + 1 }, 'runs with its `this`');
      assert.equal(service.rename.name, 'rename');
      const [event, ...more] = await waitForEvents(server, { requestId });
      assert.equal(more.length, 0);
      assert.equal(event.action, 'project.updated');
      assert.equal(event.outcome, 'SUCCESS');
      assert.deepEqual(event.actor, { type: 'USER', id: `user-${run}`, name: null });
      assert.deepEqual(event.target, { type: 'project', id, name: null });
      assert.deepEqual(event.metadata, { name: 'Renamed' });
      assert.equal(event.context.ipAddress, '10.1.2.3');
    });

    test('async: a promise resolved with the same value, SUCCESS with the target from the result', async () => {
      const requestId = `${kind}-async-${randomUUID()}`;
      const id = `p-${randomUUID()}`;
      const promise = runWithAudit(scope(requestId), () => service.archive(id));
      assert.ok(promise instanceof Promise);
      assert.deepEqual(await promise, { id, archived: true });
      const [event] = await waitForEvents(server, { requestId });
      assert.equal(event.action, 'project.archived');
      assert.equal(event.outcome, 'SUCCESS');
      assert.equal(event.actor.id, `user-${run}`);
      assert.deepEqual(event.target, { type: 'project', id, name: null });
    });

    test('throw: the very error is rethrown, FAILURE with its message', async () => {
      const requestId = `${kind}-throw-${randomUUID()}`;
      const id = `p-${randomUUID()}`;
      const error = new fixture.ProjectError(`project ${id} is protected`);
      let caught;
      try {
        runWithAudit(scope(requestId), () => service.remove(id, error));
      } catch (thrown) {
        caught = thrown;
      }
      assert.equal(caught, error, 'the same object');
      const [event] = await waitForEvents(server, { requestId });
      assert.equal(event.action, 'project.deleted');
      assert.equal(event.outcome, 'FAILURE');
      assert.equal(event.reason, `project ${id} is protected`);
      assert.deepEqual(event.target, { type: 'project', id, name: null });
    });

    test('reject: the very error rejects, FAILURE, the options\' actor wins over the scope\'s', async () => {
      const requestId = `${kind}-reject-${randomUUID()}`;
      const id = `p-${randomUUID()}`;
      const error = new fixture.ProjectError(`project ${id}\u0000 is still protected`);
      const promise = runWithAudit(scope(requestId), () => service.removeLater(id, error));
      await assert.rejects(promise, (thrown) => thrown === error);
      const [event] = await waitForEvents(server, { requestId });
      assert.equal(event.outcome, 'FAILURE');
      assert.equal(event.reason, `project ${id}\ufffd is still protected`, 'cleaned');
      assert.deepEqual(event.actor, { type: 'SERVICE', id: 'janitor', name: null });
    });
  });
}
