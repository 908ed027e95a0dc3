#!/usr/bin/env bash
# pgbench baseline for `chronicle bench append`: one single-row INSERT per transaction, the
# same client count, the same server. Compare its TPS with Chronicle's events/s.
#
#   ops/bench/pgbench-baseline.sh postgres://postgres@127.0.0.1:5432/chronicle_bench 64 20
#
# Arguments: database URL, clients (default 64), seconds (default 20).
set -euo pipefail
url="${1:?database URL}"
clients="${2:-64}"
seconds="${3:-20}"
threads=$(nproc)

psql "$url" -qX -v ON_ERROR_STOP=1 <<'SQL'
DROP TABLE IF EXISTS pgbench_single_insert;
CREATE TABLE pgbench_single_insert (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key      text   NOT NULL,
    payload  json   NOT NULL
);
SQL
script=$(mktemp)
trap 'rm -f "$script"; psql "$url" -qX -c "DROP TABLE IF EXISTS pgbench_single_insert" >/dev/null' EXIT
cat > "$script" <<'SQL'
INSERT INTO pgbench_single_insert (key, payload) VALUES (md5(random()::text), '{"capability":"bench.append","input":{"url":"https://example.com/"}}');
SQL
tps=$(pgbench -n -c "$clients" -j "$threads" -T "$seconds" -f "$script" "$url" 2>/dev/null \
  | awk '/^tps = / {print int($3); exit}')
echo "pgbench: ${tps} tps (single-row INSERT, ${clients} clients, ${seconds}s)"
