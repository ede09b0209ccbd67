// Starts the real audit-service binary for the tests: on SQLite (a new file each time) or,
// when AUDIT_TEST_DATABASE_URL is set, on that PostgreSQL database (tests tell their events
// apart by idempotency keys and ids of their own, so they may share it).
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = process.env.AUDIT_SERVICE_BIN;
if (!BIN) throw new Error('AUDIT_SERVICE_BIN must name the audit-service binary');

/** The backend the tests run on: `postgres` or `sqlite`. */
export const BACKEND = process.env.AUDIT_TEST_DATABASE_URL ? 'postgres' : 'sqlite';

/** A free TCP port on 127.0.0.1. */
export async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A running server. `kill()` sends SIGKILL; `start()` starts it again on the same port and
 * database. */
export class Server {
  constructor(databaseUrl, port, env) {
    this.databaseUrl = databaseUrl;
    this.port = port;
    this.env = env;
    this.base = `http://127.0.0.1:${port}`;
    this.url = `${this.base}/graphql`;
    this.child = undefined;
  }

  static async start(env = {}) {
    const databaseUrl =
      process.env.AUDIT_TEST_DATABASE_URL ??
      `sqlite://${join(mkdtempSync(join(tmpdir(), 'audit-node-')), 'audit.db')}?mode=rwc`;
    const server = new Server(databaseUrl, await freePort(), env);
    await server.start();
    return server;
  }

  async start() {
    const log = openSync(join(tmpdir(), `audit-node-server-${this.port}.log`), 'a');
    this.child = spawn(BIN, [], {
      env: {
        ...process.env,
        DATABASE_URL: this.databaseUrl,
        AUDIT_LISTEN: `127.0.0.1:${this.port}`,
        AUDIT_RATE_LIMIT: '0',
        ...this.env,
      },
      stdio: ['ignore', 'ignore', log],
    });
    const started = Date.now();
    for (;;) {
      try {
        const response = await fetch(`${this.base}/readyz`);
        if (response.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() - started > 30_000) throw new Error('the server did not become ready');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  kill() {
    this.child?.kill('SIGKILL');
    this.child = undefined;
  }

  async stop() {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }

  /** Runs a GraphQL document and returns its `data`, failing on errors. */
  async query(query, variables = {}, headers = {}) {
    const response = await fetch(this.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ query, variables }),
    });
    const body = await response.json();
    if (body.errors) throw new Error(JSON.stringify(body.errors));
    return body.data;
  }

  /** Every stored event with these idempotency keys' prefix or this filter, oldest first. */
  async events(filter) {
    const out = [];
    let after = null;
    for (;;) {
      const data = await this.query(
        `query($filter: AuditLogFilter, $after: String) {
          auditLogs(filter: $filter, first: 200, after: $after, orderBy: OCCURRED_AT_ASC) {
            nodes { id sequence action outcome reason metadata idempotencyKey occurredAt
              actor { type id name } target { type id name }
              context { ipAddress userAgent requestId traceId } }
            pageInfo { hasNextPage endCursor }
          }
        }`,
        { filter, after },
      );
      out.push(...data.auditLogs.nodes);
      if (!data.auditLogs.pageInfo.hasNextPage) return out;
      after = data.auditLogs.pageInfo.endCursor;
    }
  }
}
