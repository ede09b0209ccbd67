// An Apollo Server audited with @audit-service/client: the plugin records `createProject`
// (target from its result) and `rotateApiKey` (its secret redacted). Run `npm run build`
// first, then:
//   LISTEN=127.0.0.1:4000 AUDIT_URL=http://127.0.0.1:8080/graphql node examples/apollo-service.mjs
import { randomUUID } from 'node:crypto';

import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';

import { auditPlugin, createAuditClient, fromArg } from '../dist/index.js';

const listen = process.env.LISTEN ?? '127.0.0.1:4000';
const url = process.env.AUDIT_URL;
if (!url) throw new Error('AUDIT_URL must name the audit server\'s /graphql URL');

const audit = createAuditClient({
  url,
  apiKey: process.env.AUDIT_API_KEY,
  // How long a fail-closed request waits for the audit server (10 s by default).
  sendTimeoutMs: process.env.AUDIT_SEND_TIMEOUT_MS ? Number(process.env.AUDIT_SEND_TIMEOUT_MS) : undefined,
});

const typeDefs = `#graphql
  type Project { id: ID! name: String! }
  input RotateOptions { note: String, password: String }
  type Query { project(id: ID!): Project }
  type Mutation {
    createProject(name: String!): Project!
    rotateApiKey(id: ID!, secret: String!, options: RotateOptions): Boolean!
  }
`;

const projects = new Map();
const resolvers = {
  Query: {
    project: (_source, { id }) => projects.get(id) ?? null,
  },
  Mutation: {
    createProject: (_source, { name }) => {
      if (name.trim() === '') throw new Error('a project needs a name');
      const project = { id: randomUUID(), name };
      projects.set(project.id, project);
      return project;
    },
    rotateApiKey: () => true,
  },
};

const server = new ApolloServer({
  typeDefs,
  resolvers,
  plugins: [
    auditPlugin(audit, {
      operations: {
        createProject: {
          action: 'project.created',
          target: (_args, project) => project && { type: 'project', id: project.id, name: project.name },
        },
        rotateApiKey: {
          action: 'api_key.rotated',
          target: fromArg('id', 'api_key'),
        },
      },
    }),
  ],
});

const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon).replace(/^\[|\]$/g, '');
const port = Number(listen.slice(colon + 1));
// The standalone server answers GraphQL on every path, /graphql included.
const { url: served } = await startStandaloneServer(server, {
  listen: { host, port },
  // Authentication stand-in: the caller says who they are.
  context: async ({ req }) => ({
    user: req.headers['x-user-id'] ? { type: 'USER', id: String(req.headers['x-user-id']) } : undefined,
    req,
  }),
});
console.log(`listening on ${served}graphql`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await server.stop();
  await audit.shutdown({ deadline: 5000 });
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
