// Usage: AUDIT_URL=http://127.0.0.1:PORT/graphql [PROJECTS_PORT=0] [GATEWAY_PORT=0] node gateway.mjs
// Serves the `projects` subgraph and an Apollo Gateway that composes it with audit-service
// (introspected at AUDIT_URL), then prints one READY line on stdout and runs until killed.
// Everything else, logs included, goes to stderr so stdout stays machine-readable.
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { buildSubgraphSchema } from "@apollo/subgraph";
import { ApolloGateway, IntrospectAndCompose, RemoteGraphQLDataSource } from "@apollo/gateway";
import * as projects from "./projects.mjs";

// A killed test should not wait on connection draining: there is nothing to flush.
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));

const stderr = (...args) => console.error(...args);
const logger = { debug() {}, info: stderr, warn: stderr, error: stderr };

function port(name) {
  const value = process.env[name] ?? "0";
  if (!/^\d+$/.test(value) || Number(value) > 65535) {
    throw new Error(`${name} must be a port number (0 picks a free one), got ${value}`);
  }
  return Number(value);
}

// Standalone servers answer on every path, so `/graphql` is as good as `/`; the READY
// line uses it to match audit-service's own endpoint.
async function listen(server, portNumber, context) {
  const { url } = await startStandaloneServer(server, {
    listen: { host: "127.0.0.1", port: portNumber },
    context,
  });
  return `http://127.0.0.1:${new URL(url).port}/graphql`;
}

async function main() {
  const auditUrl = process.env.AUDIT_URL;
  if (!auditUrl) throw new Error("AUDIT_URL is not set (audit-service's /graphql URL)");
  const projectsPort = port("PROJECTS_PORT");
  const gatewayPort = port("GATEWAY_PORT");

  const projectsUrl = await listen(
    new ApolloServer({
      schema: buildSubgraphSchema({ typeDefs: projects.typeDefs, resolvers: projects.resolvers }),
      logger,
    }),
    projectsPort,
  );

  // No pollIntervalInMs: the gateway composes once at start, so a composition error
  // makes start-up (and this script) fail instead of being logged and retried.
  const gateway = new ApolloGateway({
    supergraphSdl: new IntrospectAndCompose({
      subgraphs: [
        { name: "audit", url: auditUrl },
        { name: projects.name, url: projectsUrl },
      ],
    }),
    // The gateway forwards no client headers by default; pass Authorization on so that the
    // caller (and so the tenant) audit-service sees is the test's, not an anonymous one.
    buildService: ({ url }) =>
      new RemoteGraphQLDataSource({
        url,
        willSendRequest({ request, context }) {
          const auth = context.req?.headers.authorization;
          if (auth) request.http.headers.set("authorization", auth);
        },
      }),
    logger,
  });
  // Stack traces in error responses would only clutter the Rust tests' assertions.
  const gatewayUrl = await listen(
    new ApolloServer({ gateway, logger, includeStacktraceInErrorResponses: false }),
    gatewayPort,
    ({ req }) => ({ req }),
  );

  console.log(`READY gateway=${gatewayUrl} projects=${projectsUrl}`);
}

main().catch((err) => {
  console.error(err?.stack ?? err);
  process.exit(1);
});
