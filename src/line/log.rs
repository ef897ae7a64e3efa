//! The inspection log: one SQLite database (bundled SQLite, WAL journal), one row per
//! image, each written in its own transaction.
//!
//! Several watchers (one per line) may write to the same file at once: SQLite
//! serialises the writers (`BEGIN IMMEDIATE` with a busy timeout) and WAL lets the
//! app and `flowspect log` read while they write. That holds on a local disk only:
//! WAL needs shared memory between the processes, which network shares do not give,
//! so a watcher on a network share keeps its database on a local disk (`--db`).
use crate::error::{Error, Result};
use crate::inspection::Verdict;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema this flowspect writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i32 = 1;

/// Statements that bring a database from version `i` to `i + 1`; a later schema
/// appends its `ALTER TABLE` here and existing logs are migrated when opened.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE inspections (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        size_bytes INTEGER,
        sha256 TEXT,
        arrived_unix_ms INTEGER NOT NULL,
        scored_unix_ms INTEGER NOT NULL,
        score REAL,
        verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'review', 'reject', 'error')),
        regions INTEGER,
        largest_region_px INTEGER,
        model_fingerprint TEXT NOT NULL,
        method TEXT NOT NULL,
        accept_below REAL NOT NULL,
        reject_from REAL,
        error TEXT,
        sorted_to TEXT,
        station TEXT NOT NULL
    );
    CREATE UNIQUE INDEX inspections_path_hash ON inspections (path, sha256);
    CREATE INDEX inspections_scored ON inspections (scored_unix_ms);",
];

/// One inspection: an image scored, or a file that could not be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// Row id (0 before the row is written).
    pub id: i64,
    pub path: String,
    pub size_bytes: Option<u64>,
    /// SHA-256 of the file's bytes, hex (`None` when the file could not be read).
    pub sha256: Option<String>,
    /// When the watcher first saw the file (Unix milliseconds).
    pub arrived_unix_ms: i64,
    /// When the row was written.
    pub scored_unix_ms: i64,
    pub score: Option<f32>,
    /// `None` for an error row.
    pub verdict: Option<Verdict>,
    pub regions: Option<u32>,
    /// Area of the largest defect region in pixels of the original image.
    pub largest_region_px: Option<u64>,
    pub model_fingerprint: String,
    pub method: String,
    pub accept_below: f32,
    pub reject_from: Option<f32>,
    pub error: Option<String>,
    /// Where `--sort` moved or copied the image.
    pub sorted_to: Option<String>,
    /// Host and process of the watcher that wrote the row.
    pub station: String,
}

impl LogRow {
    pub fn verdict_text(&self) -> &'static str {
        match self.verdict {
            Some(Verdict::Accept) => "accept",
            Some(Verdict::Review) => "review",
            Some(Verdict::Reject) => "reject",
            None => "error",
        }
    }

    /// Milliseconds from arrival to the log row.
    pub fn latency_ms(&self) -> i64 {
        self.scored_unix_ms - self.arrived_unix_ms
    }
}

/// What `flowspect log` and the Inspect tab ask for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub since_unix_ms: Option<i64>,
    /// accept, review, reject or error.
    pub verdict: Option<String>,
    /// Newest rows only, at most this many (all when `None`).
    pub limit: Option<usize>,
}

pub struct InspectionLog {
    path: PathBuf,
    conn: Connection,
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::bad_file(path, format!("inspection log: {e}"))
}

impl InspectionLog {
    /// Opens (or creates) the log, switches it to WAL and migrates an older schema.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(|e| db_err(path, e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| db_err(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::bad_file(path, format!("inspection log: cannot switch to WAL (journal mode {mode})")));
        }
        // A row is on disk when its transaction returns, power loss included.
        conn.execute_batch("PRAGMA synchronous = FULL;").map_err(|e| db_err(path, e))?;
        let mut log = Self { path: path.into(), conn };
        log.migrate()?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err(&path, e))?;
        let version: i32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| db_err(&path, e))?;
        if version > SCHEMA_VERSION {
            return Err(Error::bad_file(
                &path,
                format!("inspection log of schema version {version}, written by a newer flowspect; this one reads up to version {SCHEMA_VERSION}"),
            ));
        }
        if version == 0 {
            let tables: i64 = tx
                .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
                .map_err(|e| db_err(&path, e))?;
            if tables > 0 {
                return Err(Error::bad_file(&path, "not a flowspect inspection log (an SQLite database with other tables)"));
            }
        }
        for (v, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(|e| db_err(&path, e))?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", v + 1)).map_err(|e| db_err(&path, e))?;
        }
        tx.commit().map_err(|e| db_err(&path, e))
    }

    /// The row already written for this file (same path and content), if any. A file
    /// that could not be read (`sha256` `None`) matches an earlier error row of the
    /// same path and size.
    pub fn find(&self, path: &str, sha256: Option<&str>, size: Option<u64>) -> Result<Option<LogRow>> {
        let sql = format!("SELECT {COLUMNS} FROM inspections WHERE path = ?1 AND ");
        let r = match sha256 {
            Some(h) => self.conn.query_row(&format!("{sql}sha256 = ?2"), params![path, h], row_from),
            None => self.conn.query_row(
                &format!("{sql}sha256 IS NULL AND size_bytes IS ?2 ORDER BY id DESC LIMIT 1"),
                params![path, size.map(|s| s as i64)],
                row_from,
            ),
        };
        r.optional().map_err(|e| db_err(&self.path, e))
    }

    /// Writes one row in its own transaction and returns its id. A row for the same
    /// path and content written meanwhile (another watcher) is kept and returned.
    pub fn insert(&mut self, row: &LogRow) -> Result<LogRow> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err(&path, e))?;
        let changed = tx
            .execute(
                "INSERT OR IGNORE INTO inspections (path, size_bytes, sha256, arrived_unix_ms, scored_unix_ms, score, verdict,
                 regions, largest_region_px, model_fingerprint, method, accept_below, reject_from, error, sorted_to, station)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                params![
                    row.path,
                    row.size_bytes.map(|s| s as i64),
                    row.sha256,
                    row.arrived_unix_ms,
                    row.scored_unix_ms,
                    row.score.map(|s| s as f64),
                    row.verdict_text(),
                    row.regions,
                    row.largest_region_px.map(|s| s as i64),
                    row.model_fingerprint,
                    row.method,
                    row.accept_below as f64,
                    row.reject_from.map(|s| s as f64),
                    row.error,
                    row.sorted_to,
                    row.station,
                ],
            )
            .map_err(|e| db_err(&path, e))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(|e| db_err(&path, e))?;
        if changed == 0 {
            if let Some(existing) = self.find(&row.path, row.sha256.as_deref(), row.size_bytes)? {
                return Ok(existing);
            }
        }
        Ok(LogRow { id, ..row.clone() })
    }

    /// Rows matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> Result<Vec<LogRow>> {
        let mut sql = format!("SELECT {COLUMNS} FROM inspections WHERE scored_unix_ms >= ?1");
        if q.verdict.is_some() {
            sql.push_str(" AND verdict = ?2");
        } else {
            sql.push_str(" AND ?2 IS NULL");
        }
        sql.push_str(" ORDER BY id DESC");
        if let Some(n) = q.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let mut st = self.conn.prepare(&sql).map_err(|e| db_err(&self.path, e))?;
        let rows = st
            .query_map(params![q.since_unix_ms.unwrap_or(i64::MIN), q.verdict], row_from)
            .map_err(|e| db_err(&self.path, e))?;
        let mut out: Vec<LogRow> = rows.collect::<rusqlite::Result<_>>().map_err(|e| db_err(&self.path, e))?;
        out.reverse();
        Ok(out)
    }

    /// Rows written after row `after_id`, oldest first (the Inspect tab's feed).
    pub fn rows_after(&self, after_id: i64) -> Result<Vec<LogRow>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM inspections WHERE id > ?1 ORDER BY id"))
            .map_err(|e| db_err(&self.path, e))?;
        let rows = st.query_map(params![after_id], row_from).map_err(|e| db_err(&self.path, e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| db_err(&self.path, e))
    }

    /// `PRAGMA integrity_check`: "ok" for a sound file.
    pub fn integrity_check(&self) -> Result<String> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| db_err(&self.path, e))
    }
}

const COLUMNS: &str = "id, path, size_bytes, sha256, arrived_unix_ms, scored_unix_ms, score, verdict, regions, \
    largest_region_px, model_fingerprint, method, accept_below, reject_from, error, sorted_to, station";

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRow> {
    let verdict: String = r.get(7)?;
    Ok(LogRow {
        id: r.get(0)?,
        path: r.get(1)?,
        size_bytes: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        sha256: r.get(3)?,
        arrived_unix_ms: r.get(4)?,
        scored_unix_ms: r.get(5)?,
        score: r.get::<_, Option<f64>>(6)?.map(|v| v as f32),
        verdict: match verdict.as_str() {
            "accept" => Some(Verdict::Accept),
            "review" => Some(Verdict::Review),
            "reject" => Some(Verdict::Reject),
            _ => None,
        },
        regions: r.get(8)?,
        largest_region_px: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        model_fingerprint: r.get(10)?,
        method: r.get(11)?,
        accept_below: r.get::<_, f64>(12)? as f32,
        reject_from: r.get::<_, Option<f64>>(13)?.map(|v| v as f32),
        error: r.get(14)?,
        sorted_to: r.get(15)?,
        station: r.get(16)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, hash: Option<&str>, verdict: Option<Verdict>) -> LogRow {
        LogRow {
            id: 0,
            path: path.into(),
            size_bytes: Some(10),
            sha256: hash.map(String::from),
            arrived_unix_ms: 1000,
            scored_unix_ms: 1100,
            score: verdict.map(|_| 1.5),
            verdict,
            regions: Some(1),
            largest_region_px: Some(40),
            model_fingerprint: "abc".into(),
            method: "memflow".into(),
            accept_below: 2.0,
            reject_from: None,
            error: verdict.is_none().then(|| "bad".into()),
            sorted_to: None,
            station: "test".into(),
        }
    }

    #[test]
    fn rows_round_trip_and_the_key_is_path_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.sqlite");
        let mut log = InspectionLog::open(&p).unwrap();
        let a = log.insert(&row("a.png", Some("h1"), Some(Verdict::Accept))).unwrap();
        assert!(a.id > 0);
        // The same file again is not a second row.
        let again = log.insert(&row("a.png", Some("h1"), Some(Verdict::Reject))).unwrap();
        assert_eq!(again.id, a.id);
        assert_eq!(again.verdict, Some(Verdict::Accept));
        // New content under the same name is.
        log.insert(&row("a.png", Some("h2"), Some(Verdict::Reject))).unwrap();
        log.insert(&row("b.txt", None, None)).unwrap();
        drop(log);
        let log = InspectionLog::open(&p).unwrap();
        let all = log.query(&Query::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], a);
        assert_eq!(all[2].verdict_text(), "error");
        assert_eq!(all[2].error.as_deref(), Some("bad"));
        assert!(log.find("b.txt", None, Some(10)).unwrap().is_some());
        assert!(log.find("b.txt", None, Some(11)).unwrap().is_none());
        let rejects = log.query(&Query { verdict: Some("reject".into()), ..Default::default() }).unwrap();
        assert_eq!(rejects.len(), 1);
        assert_eq!(log.rows_after(a.id).unwrap().len(), 2);
        assert_eq!(log.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_newer_schema_and_a_foreign_database_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let newer = dir.path().join("newer.sqlite");
        Connection::open(&newer).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
        let e = InspectionLog::open(&newer).err().unwrap().to_string();
        assert!(e.contains("newer.sqlite") && e.contains("version 99"), "{e}");
        let foreign = dir.path().join("foreign.sqlite");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        let e = InspectionLog::open(&foreign).err().unwrap().to_string();
        assert!(e.contains("not a flowspect inspection log"), "{e}");
        let text = dir.path().join("text.sqlite");
        std::fs::write(&text, b"this is not a database at all, just some text that is long enough").unwrap();
        assert!(InspectionLog::open(&text).is_err());
    }
}
