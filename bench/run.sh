#!/usr/bin/env bash
# Builds audit-service and the load generator in release mode, then measures everything
# side by side with pgbench and writes the table to docs/benchmarks.md.
# Needs PostgreSQL (BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres),
# pgbench and psql. Takes about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p audit-service -p audit-bench
target/release/audit-bench --write docs/benchmarks.md.table all "$@"
{
    echo "# Benchmarks"
    echo
    echo "Produced by \`bash bench/run.sh\` (audit-bench and pgbench, one run, this machine)."
    echo "The hash chain's own per-event cost is measured by \`cargo bench --bench chain\`."
    echo
    cat docs/benchmarks.md.table
    # The sections written by hand, from the first second-level heading on, stay.
    echo
    sed -n '/^## /,$p' docs/benchmarks.md
} > docs/benchmarks.md.new
mv docs/benchmarks.md.new docs/benchmarks.md
rm docs/benchmarks.md.table
