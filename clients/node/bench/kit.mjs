// The Node kit measured: what enqueue() costs the caller (in memory, with the spool, with
// fsync), one client's batched delivery, and what the Express middleware adds to a request.
// Prints one JSON object; `audit-bench node` runs it beside its own batch load and reports.
//
//   AUDIT_URL=http://127.0.0.1:8080/graphql AUDIT_API_KEY=... SECONDS=10 node bench/kit.mjs
import { mkdtempSync, rmSync } from 'node:fs';
import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bench } from 'tinybench';
import { auditMiddleware, createAuditClient } from '../dist/index.js';

const url = process.env.AUDIT_URL ?? 'http://127.0.0.1:8080/graphql';
const apiKey = process.env.AUDIT_API_KEY;
const seconds = Number(process.env.SECONDS ?? 10);
const out = {};

const makeEvent = (i) => ({
  action: 'project.updated',
  actor: { type: 'USER', id: `user-${i % 500}`, name: 'Ada Lovelace' },
  target: { type: 'project', id: `project-${i % 2000}`, name: 'Apollo' },
  metadata: { field: 'name', from: 'old name', to: 'new name', attempt: i % 7, tags: ['a', 'b'] },
  context: { ipAddress: '10.20.30.40', userAgent: 'Mozilla/5.0 (X11; Linux x86_64)', requestId: `req-${i}` },
});

/** p50/p99 of a tinybench task, in microseconds. */
const micros = (task) => ({
  p50: +(task.result.latency.p50 * 1000).toFixed(2),
  p99: +(task.result.latency.p99 * 1000).toFixed(2),
  samples: task.result.latency.samplesCount ?? task.runs,
});

// 1. One client's batched delivery: one producer enqueueing as fast as the buffer lets it.
{
  const audit = createAuditClient({ url, apiKey, deadLetterFile: false });
  const started = performance.now();
  let i = 0;
  while (performance.now() - started < seconds * 1000) {
    const waiting = audit.enqueue(makeEvent(i++));
    // Wait when the buffer is full (the promise waits for room), and let the event loop
    // run (the answers to the batches) now and then, as a service's would.
    if (i % 200 === 0) await new Promise((resolve) => setImmediate(resolve));
    else if (audit.metrics().buffered >= 49_000) await waiting;
  }
  const report = await audit.flush();
  const elapsed = (performance.now() - started) / 1000;
  const metrics = audit.metrics();
  out.delivery = { perSecond: Math.round(report.delivered / elapsed), ...report, retries: metrics.retries, batches: metrics.batches };
  await audit.shutdown();
}

// 2. enqueue() on the caller's event loop, at 5,000 events/s (half what one client
//    delivers), timed call by call: with audit-service storing the events (the machine's
//    two cores busy with it), and with it unreachable (the call's own cost), beside the
//    same loop timing only JSON.stringify(event) (the least any enqueue() must do, and
//    what this machine makes of a few microseconds of work after a sleep).
{
  const rate = 5000;
  const paced = async (call) => {
    const samples = [];
    const started = performance.now();
    for (let i = 0; performance.now() - started < seconds * 1000; i += 1) {
      const wait = started + (i * 1000) / rate - performance.now();
      if (wait >= 1) await new Promise((resolve) => setTimeout(resolve, wait));
      const event = makeEvent(i);
      const t0 = process.hrtime.bigint();
      call(event);
      samples.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    samples.sort((a, b) => a - b);
    const at = (p) => +samples[Math.min(samples.length - 1, Math.floor((p / 100) * samples.length))].toFixed(2);
    return { p50: at(50), p99: at(99), samples: samples.length };
  };
  const dirs = [mkdtempSync(join(tmpdir(), 'kit-spool-')), mkdtempSync(join(tmpdir(), 'kit-fsync-'))];
  const room = rate * seconds + 1000;
  const live = (spool) => createAuditClient({ url, apiKey, deadLetterFile: false, spool });
  const idle = createAuditClient({ url: 'http://127.0.0.1:9/graphql', deadLetterFile: false, maxEvents: room, maxBytes: room * 4096 });
  // The floor: serialising the event, the least any enqueue() must do, in the same loop.
  out.enqueue = { floor: await paced((event) => void JSON.stringify(event)) };
  for (const [name, audit] of [['memory', live()], ['spool', live({ dir: dirs[0] })], ['fsync', live({ dir: dirs[1], fsync: true })], ['idle', idle]]) {
    out.enqueue[name] = await paced((event) => void audit.enqueue(event));
    await audit.shutdown({ deadline: name === 'idle' ? 0 : 30_000 });
  }
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}

// 3. The Express middleware (fail-open) per request, in process: a request and a response
//    (node:http's own classes, no socket) through the middleware to a handler that
//    answers 200, until the event is handed to enqueue(); beside the same handler without
//    it. Over HTTP the loopback's noise (hundreds of microseconds at p99 on this machine)
//    drowns what is measured here.
{
  const live = createAuditClient({ url, apiKey, deadLetterFile: false });
  const idle = createAuditClient({ url: 'http://127.0.0.1:9/graphql', deadLetterFile: false, maxEvents: 5_000_000, maxBytes: 4 * 1024 ** 3 });
  const options = { action: 'project.viewed', target: (req) => ({ type: 'project', id: req.params.id }), actor: () => 'bench-user' };
  const request = (n) => {
    const req = new IncomingMessage(new Socket());
    Object.assign(req, { method: 'GET', url: `/projects/p-${n % 100}`, ip: '10.1.2.3', params: { id: `p-${n % 100}` } });
    req.headers = { 'user-agent': 'Mozilla/5.0 (X11; Linux x86_64)', 'x-request-id': `req-${n}` };
    return [req, new ServerResponse(req)];
  };
  const handler = (req, res) => {
    res.statusCode = 200;
    res.emit('finish');
  };
  const through = async (middleware, n) => {
    const [req, res] = request(n);
    if (middleware) middleware(req, res, () => handler(req, res));
    else handler(req, res);
    // The event is built and enqueued in a microtask after `finish`.
    await null;
    await null;
  };
  const bench = new Bench({ time: 2000, warmupTime: 300 });
  let n = 0;
  bench.add('bare', () => through(undefined, n++));
  bench.add('audited', () => through(auditMiddleware(live, options), n++));
  bench.add('idle', () => through(auditMiddleware(idle, options), n++));
  await bench.run();
  out.middleware = Object.fromEntries(bench.tasks.map((task) => [task.name, micros(task)]));
  out.middleware.recorded = (await live.shutdown()).delivered;
  await idle.shutdown({ deadline: 0 });
}

process.stdout.write(`${JSON.stringify(out)}\n`);
