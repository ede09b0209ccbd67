// The `projects` subgraph that audit-service is composed with in the federation tests.
// compose.mjs needs only its SDL; gateway.mjs also serves it, so both take it from here.
import { parse } from "graphql";

export const name = "projects";

// `AuditTarget` is audit-service's entity. This subgraph can only point at one (it holds
// no audit data), hence `resolvable: false`: the gateway asks audit-service's `_entities`
// for everything past the key fields.
export const typeDefsSDL = `
extend schema @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key", "@shareable"])

type Project @key(fields: "id") {
  id: ID!
  name: String!
  """The project's audit trail, resolved by audit-service."""
  auditTrail: AuditTarget!
}

type AuditTarget @key(fields: "type id", resolvable: false) {
  type: String!
  id: String!
}

type Query {
  project(id: ID!): Project
  projects: [Project!]!
}
`;

export const typeDefs = parse(typeDefsSDL);

export const projects = [
  { id: "p1", name: "Apollo" },
  { id: "p2", name: "Gemini" },
  { id: "p3", name: "Mercury" },
];

const byId = (id) => projects.find((p) => p.id === id) ?? null;

export const resolvers = {
  Query: {
    project: (_, { id }) => byId(id),
    projects: () => projects,
  },
  Project: {
    // Project is an entity, so other subgraphs (and the query planner) may fetch it by key.
    __resolveReference: ({ id }) => byId(id),
    // The target type must match what audit-service records for projects.
    auditTrail: ({ id }) => ({ type: "project", id }),
  },
};
