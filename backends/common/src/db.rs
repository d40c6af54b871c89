//! Each service's SQLite database: one file per service in the data directory,
//! WAL mode, schema brought up to date by embedded migrations at open.
//!
//! Migrations are plain SQL strings compiled into the binary ([`Schema`]) and run
//! by sqlx's migrator, which records each applied version and checksum in
//! `_sqlx_migrations`. They are listed by hand rather than with `sqlx::migrate!`
//! so the build needs no proc-macro copy of the SQLite driver.

use std::borrow::Cow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// A service's schema history: `(version, description, sql)` in version order.
/// Applied scripts must never change: the migrator refuses a changed checksum.
#[derive(Debug, Clone, Copy)]
pub struct Schema(pub &'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Schema {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// SQLite refused to open the file.
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    /// A migration failed; the schema is left at the last applied version.
    #[error("cannot migrate database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
}

/// Opens (creating if missing) `<data_dir>/<service>.db` and applies `schema`.
/// The pool waits up to 5 s on a locked database instead of failing at once.
pub async fn open(data_dir: &Path, service: &str, schema: Schema) -> Result<SqlitePool, DbError> {
    std::fs::create_dir_all(data_dir).map_err(|source| DbError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = data_dir.join(format!("{service}.db"));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|source| DbError::Open {
            path: path.clone(),
            source,
        })?;
    let migrator = Migrator::new(schema)
        .await
        .map_err(|source| DbError::Migrate {
            path: path.clone(),
            source,
        })?;
    migrator
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate { path, source })?;
    Ok(pool)
}

/// Starts a write transaction that takes SQLite's write lock up front.
///
/// A plain `BEGIN` upgrades to a write lock at the first write, and two
/// concurrent upgraders fail with "database is locked" regardless of the busy
/// timeout; `BEGIN IMMEDIATE` makes the second writer wait instead. Every
/// read-check-then-write sequence (reservations, idempotency keys) uses this.
pub async fn begin_write(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}
