#!/usr/bin/env bash
# Backs up Chronicle's database, online (the server keeps serving), into a new folder:
#
#   PostgreSQL  chronicle.pgdump  pg_dump --format=custom: the event store, the read models
#                                 and their checkpoints, all in one snapshot
#   SQLite      chronicle.db      VACUUM INTO: SQLite's consistent online copy
#   both        events.ndjson     `chronicle events export`: the events alone, portable to
#                                 either backend (`chronicle events import`); taken after
#                                 the first file, so it may hold a few more events
#               manifest.json     what was taken, when, by which version
#
#   CHRONICLE_DATABASE_URL=postgres://… ops/backup.sh [DIR]
#
# DIR must not exist yet (default: backups/<UTC time>). CHRONICLE_BIN names the chronicle
# binary (default: chronicle on PATH). The server secret (CHRONICLE_JWT_SECRET) and the audit
# key are not in the backup: keep them in your secret store, a restore needs the same ones.
# Restore with ops/restore.sh; see ops/RUNBOOK.md.
set -euo pipefail

url="${CHRONICLE_DATABASE_URL:?set CHRONICLE_DATABASE_URL to the database to back up}"
bin="${CHRONICLE_BIN:-chronicle}"
dir="${1:-backups/$(date -u +%Y%m%dT%H%M%SZ)}"

if [ -e "$dir" ]; then
  echo "backup: $dir exists; name a new folder" >&2
  exit 2
fi
mkdir -p "$dir"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

case "$url" in
  postgres://* | postgresql://*)
    backend=postgres
    # One repeatable-read snapshot for every table: the read models match their checkpoints.
    pg_dump --format=custom --no-owner --no-privileges --file="$dir/chronicle.pgdump" --dbname="$url"
    database_file=chronicle.pgdump
    ;;
  sqlite:*)
    backend=sqlite
    path="${url#sqlite:}"
    path="${path#//}"
    path="${path%%\?*}"
    if [ ! -f "$path" ]; then
      echo "backup: no SQLite database at $path" >&2
      exit 2
    fi
    target="$dir/chronicle.db"
    # A read transaction in WAL mode: writers go on; wait out a checkpoint's brief lock.
    sqlite3 -cmd ".timeout 30000" "$path" "VACUUM INTO '${target//\'/\'\'}'"
    database_file=chronicle.db
    ;;
  *)
    echo "backup: CHRONICLE_DATABASE_URL is neither postgres:// nor sqlite:" >&2
    exit 2
    ;;
esac

"$bin" events export > "$dir/events.ndjson"
events="$(wc -l < "$dir/events.ndjson" | tr -d ' ')"
version="$("$bin" --version)"
finished="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

cat > "$dir/manifest.json" <<EOF
{"backend": "$backend", "database": "$database_file", "events": "events.ndjson", "events_exported": $events, "started_at": "$started", "finished_at": "$finished", "chronicle": "$version"}
EOF
echo "backup: $backend database and $events exported events in $dir" >&2
