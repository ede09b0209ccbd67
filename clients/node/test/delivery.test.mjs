// Delivery's guarantees with the server and the sender killed: a 30 s outage at 500
// events/s loses nothing and duplicates nothing; a spooling process killed twice loses no
// event whose enqueue() returned.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { createAuditClient } from '../dist/index.js';
import { Server } from './server.mjs';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let server;
before(async () => {
  server = await Server.start();
});
after(() => server.stop());

/** The stored events of these runs (targets `run/<id>`), by idempotency key. */
async function storedKeys(runs) {
  const events = await server.events({ targetType: 'run', targetIds: runs });
  return events.map((event) => event.idempotencyKey);
}

test('a 30 s outage at 500 events/s: 0 lost, 0 duplicated', { timeout: 180_000 }, async () => {
  const audit = createAuditClient({ url: server.url, deadLetterFile: false });
  const run = randomUUID();
  const keys = [];
  const started = Date.now();
  const rate = 500;
  const phases = [5_000, 30_000, 5_000];
  const total = phases.reduce((a, b) => a + b);
  let outage;
  for (let i = 0; i < (rate * total) / 1000; i += 1) {
    const due = started + (i * 1000) / rate;
    if (due > Date.now()) await sleep(due - Date.now());
    const elapsed = Date.now() - started;
    if (outage === undefined && elapsed >= phases[0]) {
      server.kill();
      outage = Date.now();
    }
    if (outage !== undefined && !server.child && elapsed >= phases[0] + phases[1]) await server.start();
    keys.push(await audit.enqueue({ action: 'load.enqueued', actor: { type: 'SERVICE', id: 'outage' }, target: { type: 'run', id: run }, metadata: { i } }));
  }
  const report = await audit.shutdown({ deadline: 60_000 });
  assert.equal(keys.length, 20_000);
  assert.deepEqual(report, { delivered: 20_000, deadLettered: 0, undelivered: 0 });
  const stored = await storedKeys([run]);
  assert.equal(stored.length, keys.length, 'every event stored, none twice');
  assert.equal(new Set(stored).size, stored.length);
  assert.deepEqual(new Set(stored), new Set(keys));
  assert.ok(audit.metrics().retries > 0, 'the outage was felt');
});

/** Runs examples/enqueue-load.mjs; resolves with the keys it printed, killing it with
 * SIGKILL after `killAfter` keys when given. */
function load(env, killAfter) {
  const child = spawn(process.execPath, [new URL('../examples/enqueue-load.mjs', import.meta.url).pathname], {
    env: { ...process.env, AUDIT_URL: server.url, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const keys = [];
  let flushed = false;
  createInterface({ input: child.stdout }).on('line', (line) => {
    if (line === 'flushed') flushed = true;
    else keys.push(line);
    if (killAfter !== undefined && keys.length === killAfter) child.kill('SIGKILL');
  });
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ keys, flushed, code, signal })));
}

test('a spooling sender killed twice with SIGKILL loses no event whose enqueue() returned', { timeout: 120_000 }, async () => {
  const spool = mkdtempSync(join(tmpdir(), 'audit-spool-'));
  const runs = [randomUUID(), randomUUID()];
  const first = await load({ SPOOL: spool, COUNT: '5000', RATE: '2000', RUN: runs[0] }, 1500);
  assert.equal(first.signal, 'SIGKILL');
  const second = await load({ SPOOL: spool, COUNT: '5000', RATE: '0', RUN: runs[1] }, 2500);
  assert.equal(second.signal, 'SIGKILL');
  const drain = await load({ SPOOL: spool, COUNT: '0', RUN: 'drain' });
  assert.ok(drain.flushed, 'the third process drained the spool');
  assert.equal(drain.keys.length, 0);

  const stored = await storedKeys(runs);
  assert.equal(new Set(stored).size, stored.length, 'no key stored twice');
  const missing = [...first.keys, ...second.keys].filter((key) => !stored.includes(key));
  assert.deepEqual(missing, [], 'every key printed after enqueue() returned is stored');
  assert.ok(first.keys.length >= 1500 && second.keys.length >= 2500);
});
