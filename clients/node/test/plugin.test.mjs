// The Apollo Server plugin: examples/apollo-service.mjs as a child process, against the
// real server.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import { startExample, waitForEvents } from './helpers.mjs';
import { Server } from './server.mjs';

const run = randomUUID();
const user = `apollo-user-${run}`;
let server;
let service;

before(async () => {
  server = await Server.start();
  service = await startExample('apollo-service.mjs', server.url);
});

after(async () => {
  assert.equal(await service?.stop(), 0, 'the service exits cleanly on SIGTERM');
  await server?.stop();
});

async function graphql(query, variables, requestId) {
  const response = await fetch(`${service.base}/graphql`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'x-user-id': user,
      'x-request-id': requestId,
      'user-agent': 'plugin-test/1.0',
    },
    body: JSON.stringify({ query, variables }),
  });
  assert.equal(response.headers.get('x-request-id'), requestId);
  return response.json();
}

test('createProject with variables: SUCCESS, target from the result, arguments as metadata', async () => {
  const requestId = `gql-${randomUUID()}`;
  const { data } = await graphql(
    'mutation Create($name: String!) { createProject(name: $name) { id name } }',
    { name: 'Voyager' },
    requestId,
  );
  const { id } = data.createProject;
  const [event, ...more] = await waitForEvents(server, { requestId });
  assert.equal(more.length, 0);
  assert.equal(event.action, 'project.created');
  assert.equal(event.outcome, 'SUCCESS');
  assert.deepEqual(event.actor, { type: 'USER', id: user, name: null });
  assert.deepEqual(event.target, { type: 'project', id, name: 'Voyager' });
  assert.deepEqual(event.metadata, { operation: 'createProject', arguments: { name: 'Voyager' } });
  assert.equal(event.context.userAgent, 'plugin-test/1.0');
  assert.equal(event.context.ipAddress, '127.0.0.1');
});

test('an aliased createProject is recorded by its field name', async () => {
  const requestId = `gql-${randomUUID()}`;
  const { data } = await graphql(
    'mutation { p: createProject(name: "Aliased") { id } q: createProject(name: "Twice") { id } }',
    {},
    requestId,
  );
  const events = await waitForEvents(server, { requestId }, 2);
  assert.equal(events.length, 2);
  assert.deepEqual(
    events.map((event) => [event.action, event.target.id]).sort(),
    [['project.created', data.p.id], ['project.created', data.q.id]].sort(),
  );
  assert.deepEqual(
    events.map((event) => event.metadata.operation),
    ['createProject', 'createProject'],
  );
});

test('rotateApiKey: the secret and a nested password are redacted', async () => {
  const requestId = `gql-${randomUUID()}`;
  const secret = `s3cr3t-${randomUUID()}`;
  const { data } = await graphql(
    'mutation Rotate($secret: String!, $options: RotateOptions) { rotateApiKey(id: "key-1", secret: $secret, options: $options) }',
    { secret, options: { note: 'quarterly', password: 'hunter2' } },
    requestId,
  );
  assert.equal(data.rotateApiKey, true);
  const [event] = await waitForEvents(server, { requestId });
  assert.equal(event.action, 'api_key.rotated');
  assert.deepEqual(event.target, { type: 'api_key', id: 'key-1', name: null });
  assert.deepEqual(event.metadata, {
    operation: 'rotateApiKey',
    arguments: { id: 'key-1', secret: '[redacted]', options: { note: 'quarterly', password: '[redacted]' } },
  });
  const text = JSON.stringify(event);
  assert.ok(!text.includes(secret) && !text.includes('hunter2'), 'no secret is stored');
});

test('a failing resolver is a FAILURE with its message; unlisted fields record nothing', async () => {
  const requestId = `gql-${randomUUID()}`;
  const body = await graphql('mutation { createProject(name: "   ") { id } }', {}, requestId);
  assert.equal(body.errors?.[0]?.message, 'a project needs a name');
  const [event] = await waitForEvents(server, { requestId });
  assert.equal(event.action, 'project.created');
  assert.equal(event.outcome, 'FAILURE');
  assert.equal(event.reason, 'a project needs a name');
  assert.equal(event.target, null);

  const queried = `gql-${randomUUID()}`;
  await graphql('{ project(id: "nope") { id } }', {}, queried);
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(await server.events({ requestId: queried }), []);
});
