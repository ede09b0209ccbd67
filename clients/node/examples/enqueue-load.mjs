// Enqueues COUNT events (RATE per second, 0 for unpaced) through a spool, printing each
// idempotency key once enqueue() has returned it, then flushes and prints `flushed`. With
// COUNT=0 it only delivers what the spool holds from an earlier run.
//
//   SPOOL=/tmp/spool COUNT=1000 RATE=500 RUN=r1 AUDIT_URL=http://127.0.0.1:8080/graphql \
//     node examples/enqueue-load.mjs
import { createAuditClient } from '../dist/index.js';

const count = Number(process.env.COUNT ?? 1000);
const rate = Number(process.env.RATE ?? 0);
const run = process.env.RUN ?? `run-${Date.now()}`;
const audit = createAuditClient({
  url: process.env.AUDIT_URL ?? 'http://127.0.0.1:8080/graphql',
  apiKey: process.env.AUDIT_API_KEY,
  spool: process.env.SPOOL ? { dir: process.env.SPOOL } : undefined,
  onError: (error) => console.error(`audit: ${error.code}: ${error.message}`),
});

const started = Date.now();
for (let i = 0; i < count; i += 1) {
  if (rate > 0) {
    const due = started + (i * 1000) / rate;
    if (due > Date.now()) await new Promise((resolve) => setTimeout(resolve, due - Date.now()));
  }
  const key = await audit.enqueue({
    action: 'load.enqueued',
    actor: { type: 'SERVICE', id: 'enqueue-load' },
    target: { type: 'run', id: run },
    metadata: { i },
    idempotencyKey: `${run}-${i}`,
  });
  process.stdout.write(`${key}\n`);
}
await audit.flush();
await audit.shutdown({ deadline: 1000 });
process.stdout.write('flushed\n');
