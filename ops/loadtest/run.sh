#!/usr/bin/env bash
# Load test of the HTTP API (issue 13, item 7): `ops/loadtest/run.sh [options]`.
#
# Starts Chronicle on a throw-away PostgreSQL database (created at CHRONICLE_TEST_PG_URL,
# default postgres://postgres@127.0.0.1:5432/postgres, and dropped on exit) and a free port,
# registers users (an admin first, then one user per connection) each with a remote agent of
# its own, then runs wrk with ops/loadtest/mix.lua for a fixed time: every connection acts as
# one user and repeats create task, read it, list tasks, lease, complete, read it again, and
# every tenth cycle GET /api/analytics/usage. Prints requests/s and p50/p95/p99/max per route
# and overall, and fails if any answer had an unexpected status, a socket error happened,
# the server logged an error or panicked, or nothing was measured on some route.
#
#   --duration SECONDS   how long wrk runs (default 60)
#   --smoke              10 s, for CI
#   --connections N      concurrent connections = wrk threads = users (default 8)
#   --bin PATH           the chronicle binary (default target/release/chronicle, built with
#                        `cargo build --release --locked --bin chronicle` when missing)
#   --report PATH        also keep the JSON figures there
#
# wrk comes from Debian's `wrk` package, installed when missing (fails, never skips, if it
# cannot be). The rate limits are raised for the run (each connection is one user sending
# thousands of requests a minute); every other setting is the built-in default.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

duration=60
connections=8
bin=""
report=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --smoke) duration=10; shift ;;
    --connections) connections="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --report) report="$2"; shift 2 ;;
    *) echo "loadtest: unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
done

say() { echo "loadtest: $*"; }
fail() {
  echo "loadtest: FAIL: $*" >&2
  exit 1
}

if ! command -v wrk >/dev/null 2>&1; then
  say "installing Debian's wrk package"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; } >/tmp/loadtest-apt.log 2>&1; then
    cat /tmp/loadtest-apt.log >&2
    fail "could not install wrk (apt-get)"
  fi
fi
for tool in wrk curl python3 psql; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is needed"
done

if [ -z "$bin" ]; then
  bin=target/release/chronicle
  if [ ! -x "$bin" ]; then
    say "building $bin"
    cargo build --release --locked --bin chronicle || fail "cargo build --release"
  fi
fi
[ -x "$bin" ] || fail "no chronicle binary at $bin"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac

work="$(mktemp -d)"
admin_url="${CHRONICLE_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
database="chronicle_load_$(python3 -c 'import uuid; print(uuid.uuid4().hex)')"
server=""
created_db=0
stop() {
  local code=$?
  [ -n "$server" ] && { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
  if [ "$created_db" -eq 1 ]; then
    psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if [ "$code" -ne 0 ] && [ -f "$work/server.log" ]; then
    echo "--- tail of the server log" >&2
    tail -n 30 "$work/server.log" >&2
  fi
  rm -rf "$work"
}
trap stop EXIT

psql -q "$admin_url" -c "CREATE DATABASE $database" >/dev/null || fail "cannot create a database at $admin_url"
created_db=1
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
CHRONICLE_BIND="127.0.0.1:$port" \
CHRONICLE_DATABASE_URL="${admin_url%/*}/$database" \
CHRONICLE_DATA_DIR="$work/data" \
CHRONICLE_RATE_LIMIT__PER_MINUTE=100000000 \
CHRONICLE_RATE_LIMIT__AUTH_PER_MINUTE=100000000 \
CHRONICLE_RATE_LIMIT__PER_IP_PER_MINUTE=100000000 \
CHRONICLE_AUTH__ACCESS_TTL_SECS=86400 \
CHRONICLE_HTTP_AGENT__ENABLED=false \
CHRONICLE_LOG__FORMAT=json \
  "$bin" serve >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 150); do
  curl -fsS "$base/api/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || fail "the server did not start"
  sleep 0.2
done
curl -fsS "$base/api/health" >/dev/null || fail "the server does not answer /api/health"

say "registering $connections users with an agent each at $base"
python3 - "$base" "$connections" "$work/users" <<'PY' || fail "setting up users and agents"
import json, sys, urllib.request
base, count, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def post(path, body, token=None):
    request = urllib.request.Request(base + path, method="POST", data=json.dumps(body).encode())
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)

password = "load test password"
# The first user of an empty system is an admin; the load runs as ordinary users.
post("/api/auth/register", {"email": "admin@load.example", "password": password})
with open(path, "w") as out:
    for i in range(count):
        token = post("/api/auth/register", {"email": f"user{i}@load.example", "password": password})["access_token"]
        agent = post("/api/agents/register", {"name": f"load-agent-{i}", "kind": "remote",
                                              "capabilities": ["load.work"], "max_concurrency": 4}, token)["id"]
        out.write(f"{token} {agent}\n")
PY

say "wrk: ${duration}s, $connections connections ($(basename "$bin") $(dirname "$bin" | xargs basename))"
LOADTEST_USERS="$work/users" LOADTEST_REPORT="$work/report.json" \
  wrk -t "$connections" -c "$connections" -d "${duration}s" --timeout 10s \
  -s "$root/ops/loadtest/mix.lua" "$base" | tee "$work/wrk.out"
[ -n "$report" ] && cp "$work/report.json" "$report"

kill -0 "$server" 2>/dev/null || fail "the server died during the run"
python3 - "$work/report.json" <<'PY' || fail "the run had unexpected answers or errors (above)"
import json, sys
report = json.load(open(sys.argv[1]))
bad = []
for row in report["routes"]:
    if row["requests"] == 0:
        bad.append(f"{row['route']}: no request measured")
    if row["unexpected"]:
        bad.append(f"{row['route']}: {row['unexpected']} unexpected answers, first: {row['first_unexpected']}")
errors = report["socket_errors"]
if any(errors.values()):
    bad.append(f"socket errors: {errors}")
for line in bad:
    print(line, file=sys.stderr)
total = report["total"]
print(f"loadtest: {total['rps']:.0f} req/s overall, p50 {total['p50_ms']:.2f} ms, "
      f"p95 {total['p95_ms']:.2f} ms, p99 {total['p99_ms']:.2f} ms")
sys.exit(1 if bad else 0)
PY
if grep -qE '"level":"ERROR"|panicked' "$work/server.log"; then
  grep -E '"level":"ERROR"|panicked' "$work/server.log" | head -n 5 >&2
  fail "the server logged errors during the run"
fi
say "ok"
