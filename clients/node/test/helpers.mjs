// Shared by the integration tests: starting an example service as a child process, and
// waiting for events to reach the server (the integrations record in the background).
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { freePort } from './server.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Starts `examples/<name>` against `auditUrl`; resolves once it listens. */
export async function startExample(name, auditUrl, env = {}, nodeArgs = []) {
  const port = await freePort();
  const child = spawn(process.execPath, [...nodeArgs, join(root, 'examples', name)], {
    cwd: mkdtempSync(join(tmpdir(), 'audit-example-')),
    env: { ...process.env, LISTEN: `127.0.0.1:${port}`, AUDIT_URL: auditUrl, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stderr.on('data', (chunk) => {
    output += chunk;
  });
  await new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      output += chunk;
      if (output.includes('listening')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`${name} exited (${code}): ${output}`)));
  });
  return {
    base: `http://127.0.0.1:${port}`,
    port,
    child,
    output: () => output,
    /** SIGTERM, and the exit code once it exited. */
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Polls `server.events(filter)` until it holds `count` events (or `timeout` ms pass). */
export async function waitForEvents(server, filter, count = 1, timeout = 15_000) {
  const started = Date.now();
  for (;;) {
    const events = await server.events(filter);
    if (events.length >= count || Date.now() - started > timeout) return events;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
