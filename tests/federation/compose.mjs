// Usage: node compose.mjs <audit-subgraph.graphql>
// Composes audit-service's subgraph SDL with the `projects` subgraph and prints the
// supergraph SDL. Exit 0: composed; 1: composition failed; 2: bad usage or unreadable SDL.
import { readFileSync } from "node:fs";
import { Kind, parse } from "graphql";
import { composeServices } from "@apollo/composition";
import * as projects from "./projects.mjs";

const [file] = process.argv.slice(2);
if (!file) {
  console.error("usage: node compose.mjs <audit-subgraph.graphql>");
  process.exit(2);
}

let typeDefs;
try {
  typeDefs = parse(readFileSync(file, "utf8"));
} catch (err) {
  // A syntax error is the Rust side's bug, not a composition result: say which file.
  console.error(`${file}: ${err.message}`);
  process.exit(2);
}

// async-graphql's federation SDL has no `schema { query: ... }` block, so root types named
// after Rust structs (`QueryRoot`) compose "fine" as orphan types and the supergraph loses
// every audit query. Catch that here rather than in a puzzling gateway test.
const rootsKnown = typeDefs.definitions.some(
  (d) =>
    ((d.kind === Kind.SCHEMA_DEFINITION || d.kind === Kind.SCHEMA_EXTENSION) &&
      d.operationTypes?.length) ||
    ((d.kind === Kind.OBJECT_TYPE_DEFINITION || d.kind === Kind.OBJECT_TYPE_EXTENSION) &&
      d.name.value === "Query"),
);
if (!rootsKnown) {
  console.error(
    `ERROR [AUDIT_NO_QUERY_ROOT] ${file} defines no \`type Query\` and no \`schema { query: ... }\`: ` +
      "name audit-service's root types Query and Mutation",
  );
  process.exit(1);
}

const result = composeServices([
  { name: "audit", typeDefs },
  { name: projects.name, typeDefs: projects.typeDefs },
]);

const where = (e) =>
  (e.locations ?? []).map((l) => ` (${l.line}:${l.column})`).join("");

if (result.errors) {
  for (const e of result.errors) {
    console.error(`ERROR [${e.extensions?.code ?? "UNKNOWN"}] ${e.message}${where(e)}`);
  }
  console.error(`composition failed: ${result.errors.length} error(s)`);
  process.exit(1);
}

// Hints are advice, so they go to stderr and only fail the run if error-level. Federation
// 2.14 has none: its levels are WARN (60), INFO (40) and DEBUG (20), and it does not
// export the HintLevel enum, hence the literal. A later version may add ERROR above WARN.
const WARN = 60;
let severe = 0;
for (const h of result.hints) {
  const level = h.definition.level;
  if (level.value > WARN || level.name === "ERROR") severe++;
  console.error(`HINT ${level.name} [${h.definition.code}] ${h.message}`);
}
if (severe) {
  console.error(`composition failed: ${severe} error-level hint(s)`);
  process.exit(1);
}

process.stdout.write(result.supergraphSdl);
if (!result.supergraphSdl.endsWith("\n")) process.stdout.write("\n");
