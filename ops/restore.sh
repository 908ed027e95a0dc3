#!/usr/bin/env bash
# Restores a backup made by ops/backup.sh into an EMPTY database (it refuses any other):
#
#   CHRONICLE_DATABASE_URL=postgres://…/chronicle_restored ops/restore.sh BACKUP_DIR
#   CHRONICLE_DATABASE_URL=sqlite://data/chronicle.db      ops/restore.sh BACKUP_DIR
#   CHRONICLE_DATABASE_URL=… ops/restore.sh --from-ndjson BACKUP_DIR
#
# By default the database file of the backup is restored whole: events, read models and
# their checkpoints; the projections catch up from there when the server starts. The backup's
# backend must be the target's. --from-ndjson loads events.ndjson with `chronicle events
# import` instead (any backend to any backend); every read model is then built from the first
# event when the server starts.
#
# On PostgreSQL the restored events get new transaction ids, in the order of the old ones, so
# that the feed keeps its order and the target's transaction counter is past every restored
# event (a new server's counter starts low; the feed hides events of transaction ids it has
# not reached). Projection checkpoints are moved with them. Nothing that is hashed changes.
#
# CHRONICLE_BIN names the chronicle binary (default: chronicle on PATH). Afterwards:
#   chronicle audit verify     (with the original CHRONICLE_JWT_SECRET / CHRONICLE_AUDIT__KEY)
#   chronicle serve
set -euo pipefail

url="${CHRONICLE_DATABASE_URL:?set CHRONICLE_DATABASE_URL to the empty database to restore into}"
bin="${CHRONICLE_BIN:-chronicle}"
from_ndjson=false
if [ "${1:-}" = "--from-ndjson" ]; then
  from_ndjson=true
  shift
fi
dir="${1:?usage: ops/restore.sh [--from-ndjson] BACKUP_DIR}"
if [ ! -f "$dir/manifest.json" ]; then
  echo "restore: $dir/manifest.json is missing: not a backup of ops/backup.sh" >&2
  exit 2
fi

case "$url" in
  postgres://* | postgresql://*) backend=postgres ;;
  sqlite:*) backend=sqlite ;;
  *)
    echo "restore: CHRONICLE_DATABASE_URL is neither postgres:// nor sqlite:" >&2
    exit 2
    ;;
esac

sqlite_path() {
  local path="${url#sqlite:}"
  path="${path#//}"
  echo "${path%%\?*}"
}

# Refuse anything but an empty target.
case "$backend" in
  postgres)
    tables="$(psql --no-psqlrc --quiet --tuples-only --no-align --dbname="$url" \
      --command="SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")"
    if [ "$tables" != "0" ]; then
      echo "restore: the target database has $tables tables; restore only into an empty database" >&2
      exit 1
    fi
    ;;
  sqlite)
    path="$(sqlite_path)"
    if [ -s "$path" ]; then
      echo "restore: $path exists; restore only into a new file" >&2
      exit 1
    fi
    mkdir -p "$(dirname "$path")"
    ;;
esac

if $from_ndjson; then
  "$bin" events import < "$dir/events.ndjson"
  echo "restore: events imported; the read models build when the server starts" >&2
  exit 0
fi

source_backend="$(sed -n 's/.*"backend": "\([a-z]*\)".*/\1/p' "$dir/manifest.json")"
if [ "$source_backend" != "$backend" ]; then
  echo "restore: the backup is of $source_backend, the target is $backend; use --from-ndjson" >&2
  exit 2
fi

case "$backend" in
  postgres)
    pg_restore --exit-on-error --single-transaction --no-owner --no-privileges \
      --dbname="$url" "$dir/chronicle.pgdump"
    psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --dbname="$url" <<'SQL'
-- A rebuild that was running when the backup was taken is not resumed: drop its copy.
DO $$
DECLARE side record;
BEGIN
  FOR side IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rebuild\_%' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', side.nspname);
  END LOOP;
END $$;

-- New transaction ids for the restored events, one committed transaction per old id, in
-- the old ids' order: the feed order (transaction id, position) is kept and every restored
-- event is below the target's horizon.
SET synchronous_commit = off;
CREATE TABLE restore_transaction_ids (old xid8 PRIMARY KEY, new xid8);
INSERT INTO restore_transaction_ids (old) SELECT DISTINCT transaction_id FROM events;
DO $$
DECLARE id record;
BEGIN
  FOR id IN SELECT old FROM restore_transaction_ids ORDER BY old LOOP
    UPDATE restore_transaction_ids SET new = pg_current_xact_id() WHERE old = id.old;
    COMMIT;
  END LOOP;
END $$;

BEGIN;
UPDATE events SET transaction_id = ids.new
  FROM restore_transaction_ids ids WHERE events.transaction_id = ids.old;
-- A checkpoint at an event moves with it; one between events (after every event of the
-- transactions below it) moves to after the last of those.
UPDATE projection_checkpoints checkpoint
   SET transaction_id = coalesce(moved.new::text::bigint, 0),
       position = CASE
         WHEN moved.old IS NULL THEN 0
         WHEN moved.old::text::bigint = checkpoint.transaction_id THEN checkpoint.position
         ELSE 9223372036854775807
       END
  FROM projection_checkpoints original
  LEFT JOIN LATERAL (
    SELECT old, new FROM restore_transaction_ids
     WHERE old::text::bigint < original.transaction_id
        OR (old::text::bigint = original.transaction_id)
     ORDER BY old DESC LIMIT 1
  ) moved ON true
 WHERE checkpoint.name = original.name AND checkpoint.version = original.version;
DROP TABLE restore_transaction_ids;
COMMIT;
SQL
    ;;
  sqlite)
    cp "$dir/chronicle.db" "$path"
    rm -f "$path-wal" "$path-shm"
    check="$(sqlite3 "$path" "PRAGMA integrity_check")"
    if [ "$check" != "ok" ]; then
      echo "restore: the restored file fails SQLite's integrity check: $check" >&2
      exit 1
    fi
    ;;
esac
echo "restore: $backend database restored from $dir; the projections catch up when the server starts" >&2
