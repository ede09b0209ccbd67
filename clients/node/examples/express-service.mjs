// An Express service audited with @audit-service/client: the middleware records project
// creation and deletion, and a service method decorated with `Audited` records archiving,
// with the request's actor. Run `npm run build` first, then:
//   LISTEN=127.0.0.1:3000 AUDIT_URL=http://127.0.0.1:8080/graphql node examples/express-service.mjs
// FAIL_CLOSED=1 makes the routes answer only once their event is recorded (503 otherwise).
import { randomUUID } from 'node:crypto';

import express from 'express';

import {
  Audited,
  auditContext,
  auditMiddleware,
  createAuditClient,
  fromParam,
  fromResponse,
} from '../dist/index.js';

const listen = process.env.LISTEN ?? '127.0.0.1:3000';
const url = process.env.AUDIT_URL;
if (!url) throw new Error('AUDIT_URL must name the audit server\'s /graphql URL');
const failClosed = process.env.FAIL_CLOSED === '1';

const audit = createAuditClient({
  url,
  apiKey: process.env.AUDIT_API_KEY,
  // How long a fail-closed request waits for the audit server (10 s by default).
  sendTimeoutMs: process.env.AUDIT_SEND_TIMEOUT_MS ? Number(process.env.AUDIT_SEND_TIMEOUT_MS) : undefined,
});

/** The projects, in memory. */
class ProjectService {
  constructor() {
    this.projects = new Map();
  }

  create(name) {
    const id = randomUUID();
    this.projects.set(id, { id, name, archived: false });
    return id;
  }

  delete(id) {
    return this.projects.delete(id);
  }

  /** Archives a project; throws for an unknown one (recorded as a FAILURE). */
  archive(id) {
    const project = this.projects.get(id);
    if (project === undefined) throw new Error(`no project ${id}`);
    project.archived = true;
    return project;
  }
}

// What `@Audited('project.archived', ...)` above `archive` does in TypeScript: plain
// JavaScript has no decorator syntax yet, so it is applied by hand (experimental form).
const archive = Object.getOwnPropertyDescriptor(ProjectService.prototype, 'archive');
Object.defineProperty(
  ProjectService.prototype,
  'archive',
  Audited('project.archived', {
    target: ([id]) => ({ type: 'project', id }),
    client: audit,
  })(ProjectService.prototype, 'archive', archive),
);

const projects = new ProjectService();
const app = express();
app.disable('x-powered-by');
app.use(express.json());
// Authentication stand-in: the caller says who they are.
app.use((req, _res, next) => {
  const id = req.get('x-user-id');
  if (id !== undefined) req.user = { type: 'USER', id };
  next();
});
// The request's audit scope (actor, address, user agent, request id) for the decorator.
app.use(auditContext());

app.post(
  '/projects',
  auditMiddleware(audit, {
    action: 'project.created',
    target: fromResponse('id', 'project'),
    metadata: (req) => ({ name: req.body?.name }),
    failClosed,
  }),
  (req, res) => {
    const name = req.body?.name;
    if (name === undefined || name === null || name === '') {
      res.status(400).json({ error: 'name is required' });
      return;
    }
    res.status(201).json({ id: projects.create(name) });
  },
);

app.delete(
  '/projects/:id',
  auditMiddleware(audit, { action: 'project.deleted', target: fromParam('id', 'project'), failClosed }),
  (req, res) => {
    if (projects.delete(req.params.id)) res.status(204).end();
    else res.status(404).json({ error: 'no such project' });
  },
);

app.post('/projects/:id/archive', (req, res) => {
  try {
    res.json(projects.archive(req.params.id));
  } catch {
    res.status(404).json({ error: 'no such project' });
  }
});

const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon).replace(/^\[|\]$/g, '');
const port = Number(listen.slice(colon + 1));
const server = app.listen(port, host, () => {
  console.log(`listening on http://${listen}`);
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  server.close();
  server.closeAllConnections?.();
  await audit.shutdown({ deadline: 5000 });
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
