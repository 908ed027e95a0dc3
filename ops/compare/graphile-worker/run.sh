#!/usr/bin/env bash
# graphile-worker beside `chronicle bench tasks`, in one sitting, on the same PostgreSQL:
#   ops/compare/graphile-worker/run.sh [--tasks N] [--bin target/release/chronicle] [--nodes N]
# Each side gets its own throw-away database on CHRONICLE_DATABASE_URL's server (default
# postgres://postgres@127.0.0.1:5432/postgres). graphile-worker: a no-op task, worker
# concurrency 8, 8 producers adding one job per transaction. Chronicle: 8 creators, 8 remote
# agents long-polling for up to 10 tasks each. Prints both summary lines and the ratio.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
tasks=10000
bin="$root/target/release/chronicle"
nodes=1
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) tasks="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
export CHRONICLE_DATABASE_URL="${CHRONICLE_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
[ -x "$bin" ] || { echo "no Chronicle binary at $bin (cargo build --release)" >&2; exit 1; }
command -v node >/dev/null || { echo "node is needed (Node 20)" >&2; exit 1; }
(cd "$here" && npm ci --no-audit --no-fund --silent)

gw_line="$(cd "$here" && node bench.mjs --jobs "$tasks" --concurrency 8 --producers 8)"
echo "$gw_line"
ch_line="$("$bin" bench tasks --backend postgres --agents 8 --creators 8 --tasks "$tasks" --nodes "$nodes" | grep '^tasks:')"
echo "$ch_line"
gw_rate="$(sed -E 's/^graphile-worker: ([0-9.]+) jobs\/s.*/\1/' <<<"$gw_line")"
ch_rate="$(sed -E 's/^tasks: ([0-9.]+) lifecycles\/s.*/\1/' <<<"$ch_line")"
awk -v c="$ch_rate" -v g="$gw_rate" 'BEGIN { printf "ratio: chronicle/graphile-worker = %.2f\n", c / g }'
