//! Rebuild without downtime: a projection is built again from the first event into fresh
//! tables beside the live ones, under the same table names, and swapped in atomically once
//! it has caught up. Projections' SQL names its tables unqualified, so nothing in them
//! changes:
//!
//! - **PostgreSQL**: the copy is built in its own schema (`rebuild_<name>`) through a
//!   small pool whose `search_path` puts that schema first; the schema holds its own
//!   `projection_checkpoints`. The switch is one transaction on the live pool: lock the
//!   live checkpoint row (every runner on every node takes it first), apply what is left
//!   to the copy, drop the live tables, move the copy's tables into `public` (DDL is
//!   transactional), copy its checkpoint over, drop the schema.
//! - **SQLite**: the copy is built in a side file next to the database
//!   (`<db>.rebuild-<name>`). The switch takes the store's write lock (which every append
//!   and every projection write needs), applies what is left to the side file, attaches it,
//!   and replaces the live tables with copies of the side file's — while readers go on
//!   reading the old ones from their WAL snapshot.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row};

use crate::db::{ReadDb, ReadTx};
use crate::on_tx;
use crate::runner::{AnyProjector, ProjectionError};

/// How often the PostgreSQL switch tries to take the live tables, and how long it waits
/// between tries.
const SWITCH_ATTEMPTS: u32 = 1_000;
const SWITCH_RETRY: Duration = Duration::from_millis(10);

/// A copy of a projection being built beside the live one.
pub struct Shadow {
    name: &'static str,
    version: i64,
    db: ReadDb,
    place: Place,
}

enum Place {
    Schema(String),
    File(PathBuf),
}

const SQLITE_CHECKPOINTS: &str = "CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name           TEXT    NOT NULL,
        version        BIGINT  NOT NULL,
        transaction_id BIGINT  NOT NULL DEFAULT 0,
        position       BIGINT  NOT NULL DEFAULT 0,
        updated_at     BIGINT  NOT NULL,
        PRIMARY KEY (name, version)
    )";

/// `name` as a double-quoted SQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Shadow {
    /// Empty tables-to-be for projection `name` beside `live`: whatever an earlier,
    /// unfinished rebuild left is thrown away. The caller makes sure only one rebuild of a
    /// projection runs at a time.
    pub async fn create(
        live: &ReadDb,
        name: &'static str,
        version: i64,
    ) -> Result<Self, ProjectionError> {
        match live {
            ReadDb::Postgres(pool) => {
                let schema = format!("rebuild_{name}");
                let mut conn = pool.acquire().await?;
                for statement in [
                    format!("DROP SCHEMA IF EXISTS {} CASCADE", quoted(&schema)),
                    format!("CREATE SCHEMA {}", quoted(&schema)),
                    format!(
                        "CREATE TABLE {}.projection_checkpoints
                            (LIKE public.projection_checkpoints INCLUDING ALL)",
                        quoted(&schema)
                    ),
                ] {
                    sqlx::query(&statement).execute(&mut *conn).await?;
                }
                let options = (*pool.connect_options())
                    .clone()
                    .options([("search_path", format!("{schema},public"))]);
                let shadow = PgPoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await?;
                Ok(Self {
                    name,
                    version,
                    db: ReadDb::Postgres(shadow),
                    place: Place::Schema(schema),
                })
            }
            ReadDb::Sqlite { writer, .. } => {
                let main = writer.connect_options().get_filename().to_owned();
                let mut file = main.into_os_string();
                file.push(format!(".rebuild-{name}"));
                let file = PathBuf::from(file);
                remove_sqlite_file(&file);
                // A throw-away file: it needs no durability until it is copied in.
                let options = SqliteConnectOptions::new()
                    .filename(&file)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Off)
                    .busy_timeout(Duration::from_secs(10));
                let side = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await?;
                sqlx::query(SQLITE_CHECKPOINTS).execute(&side).await?;
                Ok(Self {
                    name,
                    version,
                    db: ReadDb::Sqlite {
                        writer: side.clone(),
                        reader: side,
                    },
                    place: Place::File(file),
                })
            }
        }
    }

    /// The database the copy is built in: give it to [`AnyProjector::with_db`].
    pub fn db(&self) -> &ReadDb {
        &self.db
    }

    /// Applies what is left to the copy (`projector`, built on [`Shadow::db`]) and puts it
    /// in place of the live tables, atomically; returns the events applied in the switch.
    pub async fn switch(
        self,
        live: &ReadDb,
        projector: &dyn AnyProjector,
    ) -> Result<u64, ProjectionError> {
        let switched = self.try_switch(live, projector).await;
        self.discard().await;
        switched
    }

    async fn try_switch(
        &self,
        live: &ReadDb,
        projector: &dyn AnyProjector,
    ) -> Result<u64, ProjectionError> {
        Ok(match (&self.place, live) {
            (Place::Schema(schema), ReadDb::Postgres(pool)) => {
                let mut attempts = 0u32;
                loop {
                    if let Some(applied) = self.pg_switch(pool, schema, projector).await? {
                        break applied;
                    }
                    attempts += 1;
                    if attempts >= SWITCH_ATTEMPTS {
                        return Err(ProjectionError::Rebuild(format!(
                            "the live tables of {} stayed busy through {attempts} attempts",
                            self.name
                        )));
                    }
                    tokio::time::sleep(SWITCH_RETRY).await;
                }
            }
            (Place::File(file), ReadDb::Sqlite { writer, .. }) => {
                let mut conn = writer.acquire().await?;
                sqlx::query("ATTACH DATABASE $1 AS rebuild")
                    .bind(file.to_string_lossy().into_owned())
                    .execute(&mut *conn)
                    .await?;
                let switched = sqlite_switch(&mut conn, self.name, self.version, projector).await;
                // Detached on every path: the connection goes back to the store's pool.
                let detached = sqlx::query("DETACH DATABASE rebuild")
                    .execute(&mut *conn)
                    .await;
                let applied = switched?;
                detached?;
                applied
            }
            _ => {
                return Err(ProjectionError::Rebuild(
                    "the copy and the live tables are on different backends".into(),
                ))
            }
        })
    }

    /// One attempt at the PostgreSQL switch; `None` when a live table was busy (the
    /// transaction is rolled back and the caller tries again).
    async fn pg_switch(
        &self,
        pool: &sqlx::PgPool,
        schema: &str,
        projector: &dyn AnyProjector,
    ) -> Result<Option<u64>, ProjectionError> {
        let mut tx = ReadTx::Postgres(pool.begin().await?);
        // Every runner of the live projection, on any node, takes this lock before it reads
        // the feed: none applies anything between the final catch-up and the switch.
        on_tx!(&mut tx, |conn| {
            sqlx::query(
                "SELECT position FROM public.projection_checkpoints
                  WHERE name = $1 AND version = $2 FOR UPDATE",
            )
            .bind(self.name)
            .bind(self.version)
            .fetch_optional(conn)
            .await
            .map(|_| ())
        })?;
        tx.execute_all(&[&format!(
            "SET LOCAL search_path = {}, public",
            quoted(schema)
        )])
        .await?;
        let applied = projector.catch_up_in(&mut tx).await?;
        tx.execute_all(&["SET LOCAL search_path = public"]).await?;
        let tables: Vec<(String, bool)> = on_tx!(&mut tx, |conn| {
            sqlx::query_as(
                "SELECT s.table_name::text, EXISTS (SELECT 1 FROM information_schema.tables p
                          WHERE p.table_schema = 'public' AND p.table_name = s.table_name)
                   FROM information_schema.tables s
                  WHERE s.table_schema = $1 AND s.table_name <> 'projection_checkpoints'
                  ORDER BY s.table_name",
            )
            .bind(schema)
            .fetch_all(conn)
            .await
        })?;
        // All live tables at once, without waiting: a reader holding one of them while it
        // waits for another would deadlock with a switch that waits. Busy → try again.
        let live: Vec<String> = tables
            .iter()
            .filter(|(_, exists)| *exists)
            .map(|(table, _)| format!("public.{}", quoted(table)))
            .collect();
        if !live.is_empty() {
            let lock = format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE NOWAIT",
                live.join(", ")
            );
            match tx.execute_all(&[&lock]).await {
                Ok(()) => {}
                Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
                    return Ok(None);
                }
                Err(error) => return Err(error.into()),
            }
        }
        let mut statements = Vec::new();
        for (table, _) in &tables {
            statements.push(format!("DROP TABLE IF EXISTS public.{}", quoted(table)));
            statements.push(format!(
                "ALTER TABLE {}.{} SET SCHEMA public",
                quoted(schema),
                quoted(table)
            ));
        }
        statements.push(format!(
            "UPDATE public.projection_checkpoints p
                SET transaction_id = s.transaction_id, position = s.position,
                    updated_at = s.updated_at
               FROM {}.projection_checkpoints s
              WHERE p.name = s.name AND p.version = s.version",
            quoted(schema)
        ));
        statements.push(format!("DROP SCHEMA {} CASCADE", quoted(schema)));
        let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
        tx.execute_all(&statements).await?;
        tx.commit().await?;
        Ok(Some(applied))
    }

    /// Throws the copy away (after the switch, or when the rebuild failed).
    pub async fn discard(self) {
        match (&self.place, &self.db) {
            (Place::Schema(schema), ReadDb::Postgres(pool)) => {
                let dropped =
                    sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quoted(schema)))
                        .execute(pool)
                        .await;
                if let Err(error) = dropped {
                    tracing::warn!(%error, schema, "could not drop a rebuild schema");
                }
                pool.close().await;
            }
            (Place::File(file), ReadDb::Sqlite { writer, .. }) => {
                writer.close().await;
                remove_sqlite_file(file);
            }
            _ => {}
        }
    }
}

/// The SQLite switch on the store's writer connection, with the side file attached.
async fn sqlite_switch(
    conn: &mut sqlx::SqliteConnection,
    name: &str,
    version: i64,
    projector: &dyn AnyProjector,
) -> Result<u64, ProjectionError> {
    // A deferred transaction whose first statement writes `main`: it takes the write lock
    // of the live file only (BEGIN IMMEDIATE would lock the attached side file too, which
    // the final catch-up below still writes through its own connection).
    let mut tx = conn.begin().await?;
    sqlx::query(
        "UPDATE main.projection_checkpoints SET updated_at = updated_at
          WHERE name = $1 AND version = $2",
    )
    .bind(name)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    // Nothing can be appended while this transaction holds the write lock: the copy's
    // catch-up now reaches the very end of the feed.
    let applied = projector.catch_up().await?;
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM rebuild.sqlite_master
          WHERE type = 'table' AND name <> 'projection_checkpoints'
            AND name NOT LIKE 'sqlite_%'
          ORDER BY name",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (table, create) in &tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS main.{}", quoted(table)))
            .execute(&mut *tx)
            .await?;
        // The stored text is `CREATE TABLE name (…)`: unqualified, it creates in main.
        sqlx::query(create).execute(&mut *tx).await?;
        sqlx::query(&format!(
            "INSERT INTO main.{0} SELECT * FROM rebuild.{0}",
            quoted(table)
        ))
        .execute(&mut *tx)
        .await?;
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT sql FROM rebuild.sqlite_master
              WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL",
        )
        .bind(table)
        .fetch_all(&mut *tx)
        .await?;
        for index in &indexes {
            sqlx::query(index).execute(&mut *tx).await?;
        }
    }
    let row = sqlx::query(
        "SELECT transaction_id, position, updated_at FROM rebuild.projection_checkpoints
          WHERE name = $1 AND version = $2",
    )
    .bind(name)
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE main.projection_checkpoints
            SET transaction_id = $3, position = $4, updated_at = $5
          WHERE name = $1 AND version = $2",
    )
    .bind(name)
    .bind(version)
    .bind(row.try_get::<i64, _>("transaction_id")?)
    .bind(row.try_get::<i64, _>("position")?)
    .bind(row.try_get::<i64, _>("updated_at")?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(applied)
}

fn remove_sqlite_file(file: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = file.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(path));
    }
}
