//! The read-model database: the same PostgreSQL or SQLite as the event store. Read-model
//! SQL is written once, with `$n` parameters, in the subset both speak (sqlx binds `$n` on
//! SQLite too); times are stored as epoch milliseconds so they sort the same on both.

use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

#[derive(Clone, Debug)]
pub enum ReadDb {
    Postgres(PgPool),
    /// Writes go through the store's single writer connection.
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
}

/// A transaction on the read-model database.
pub enum ReadTx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// SQLite: a transaction whose commit waits for the WAL's fsync, as the event store's do —
/// for what cannot be derived again (idempotency records).
const SQLITE_BEGIN_DURABLE: &str = "PRAGMA synchronous = FULL; BEGIN IMMEDIATE";

/// SQLite: a transaction whose commit does not wait for an fsync. In WAL mode a commit is
/// still atomic and survives a crash of the process; a power cut may lose the last few, in
/// order — and the next commit of the event store syncs the WAL with everything before it.
const SQLITE_BEGIN_DERIVED: &str = "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE";

impl ReadDb {
    /// A transaction for state that is not derived from the events: durable on commit.
    pub async fn begin(&self) -> Result<ReadTx, sqlx::Error> {
        Ok(match self {
            Self::Postgres(pool) => ReadTx::Postgres(pool.begin().await?),
            // IMMEDIATE takes the write lock up front, so another process writing the same
            // file makes us wait (busy timeout) instead of failing a later lock upgrade.
            // Every transaction on the writer connection says how durable it is, so that
            // none inherits the last one's setting.
            Self::Sqlite { writer, .. } => {
                ReadTx::Sqlite(writer.begin_with(SQLITE_BEGIN_DURABLE).await?)
            }
        })
    }

    /// A transaction for read-model rows, which the events can always give again: on SQLite
    /// its commit does not wait for an fsync (a row lost to a power cut is written again by
    /// the catch-up, its checkpoint with it). PostgreSQL's inline writes make the same
    /// choice with `synchronous_commit` (see `TaskView::write_committed`).
    pub async fn begin_derived(&self) -> Result<ReadTx, sqlx::Error> {
        Ok(match self {
            Self::Postgres(pool) => ReadTx::Postgres(pool.begin().await?),
            Self::Sqlite { writer, .. } => {
                ReadTx::Sqlite(writer.begin_with(SQLITE_BEGIN_DERIVED).await?)
            }
        })
    }

    /// A transaction for a projection's `CREATE … IF NOT EXISTS`. On PostgreSQL two nodes
    /// starting at once would otherwise race on the same catalog rows (a deadlock, or a
    /// unique violation on `pg_type`): a transaction-scoped advisory lock makes them take
    /// turns, the second finding everything there. SQLite's `BEGIN IMMEDIATE` already does.
    pub async fn begin_setup(&self) -> Result<ReadTx, sqlx::Error> {
        let mut tx = self.begin_derived().await?;
        if let ReadTx::Postgres(pg) = &mut tx {
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtext('chronicle:read-model-setup')::bigint)",
            )
            .execute(&mut **pg)
            .await?;
        }
        Ok(tx)
    }
}

impl ReadTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Sqlite(tx) => tx.commit().await,
        }
    }

    /// Runs parameterless statements in order: a projection's `CREATE … IF NOT EXISTS`.
    pub async fn execute_all(&mut self, statements: &[&str]) -> Result<(), sqlx::Error> {
        for statement in statements {
            crate::on_tx!(&mut *self, |conn| sqlx::query(statement)
                .execute(conn)
                .await
                .map(|_| ()))?;
        }
        Ok(())
    }
}

/// Runs `$body` with `$conn` bound to the connection of a [`ReadTx`]; the same body
/// compiles for both backends.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match $tx {
            $crate::db::ReadTx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::db::ReadTx::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

/// Runs `$body` with `$pool` bound to a pool to read from.
#[macro_export]
macro_rules! on_reader {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::ReadDb::Postgres($pool) => $body,
            $crate::db::ReadDb::Sqlite { reader: $pool, .. } => $body,
        }
    };
}

/// The ids `sql` selects for one team — `$1` the team, `$2` the limit — as text: what is
/// still shared with a team, for the refusal to delete it.
pub(crate) async fn ids_of_team(
    db: &ReadDb,
    sql: &'static str,
    team_id: uuid::Uuid,
    limit: u32,
) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<(String,)> = crate::on_reader!(db, |pool| {
        sqlx::query_as(sql)
            .bind(team_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
    })?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}
