//! medsfu's audit trail: who did what, when, where from, to which room, for every access
//! to patient data (join, history replay, telemetry stream, recording, screenshot, ECG
//! snapshot, export) and every change (recording, camera).
//!
//! Entries are append-only and hash-chained: each holds the SHA-256 of the previous
//! entry's hash and its own fields, so [`AuditLog::verify`] finds any entry altered,
//! removed, inserted or reordered after the fact. The store is embedded SQLite behind
//! [`AuditStore`], so that a shared database can take its place for several nodes.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// The hash "before" the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why the audit trail failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The database refused.
    #[error("audit database: {0}")]
    Db(#[from] rusqlite::Error),
}

impl AuditError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            AuditError::Db(_) => "audit_unavailable",
        }
    }
}

/// What happened, before it is numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, milliseconds since 1970 (UTC).
    pub at_unix_ms: i64,
    /// Who: the identity from the token or certificate, or the operator at the shell.
    pub actor: String,
    /// Their role.
    pub role: String,
    /// What: a stable action name (`join`, `history_replay`, `record_start`, ...).
    pub action: String,
    /// Which room (intervention), or empty.
    pub room: String,
    /// Where from: the channel and its request or session (`signalling req=12`, `cli`).
    pub source: String,
    /// Details as JSON (the track, the file, the camera command...).
    pub detail: String,
}

/// An entry of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the trail, from 1 without gaps.
    pub seq: i64,
    /// What happened.
    pub event: Event,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

/// The chain hash of an entry: SHA-256 over the previous hash and every field, each
/// length-prefixed so that no two different entries encode alike.
pub fn chain_hash(prev: &str, seq: i64, e: &Event) -> String {
    let mut h = Sha256::new();
    let seq = seq.to_string();
    let at = e.at_unix_ms.to_string();
    for field in [
        prev,
        seq.as_str(),
        at.as_str(),
        &e.actor,
        &e.role,
        &e.action,
        &e.room,
        &e.source,
        &e.detail,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where entries are kept.
pub trait AuditStore: Send + Sync {
    /// Appends an event as the next entry; returns it.
    fn append(&self, event: Event) -> Result<Entry, AuditError>;
    /// Every entry, in the order stored.
    fn entries(&self) -> Result<Vec<Entry>, AuditError>;
}

/// The audit trail in an embedded SQLite database.
pub struct AuditLog {
    db: Mutex<rusqlite::Connection>,
}

impl AuditLog {
    /// Opens (or creates) the trail in the database file `path`.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let db = rusqlite::Connection::open(path)?;
        // The server and an operator's command (`medsfu user disable`) write the same trail:
        // wait for the other writer instead of failing with "database is locked".
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL: readers (verify, export) do not block the server's appends; FULL: an
        // entry is on disk before the action it records is answered.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS audit (
                seq INTEGER PRIMARY KEY,
                at_unix_ms INTEGER NOT NULL,
                actor TEXT NOT NULL,
                role TEXT NOT NULL,
                action TEXT NOT NULL,
                room TEXT NOT NULL,
                source TEXT NOT NULL,
                detail TEXT NOT NULL,
                prev TEXT NOT NULL,
                hash TEXT NOT NULL
            );",
        )?;
        Ok(AuditLog { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // A panic elsewhere while holding the lock leaves a usable connection.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Walks the whole trail; returns what is wrong with it (empty: intact) and how many
    /// entries it has.
    pub fn verify(&self) -> Result<(Vec<String>, usize), AuditError> {
        let entries = self.entries()?;
        Ok((check(&entries), entries.len()))
    }
}

/// Finds entries altered (hash does not match), removed or inserted (numbering or chain
/// broken) or reordered (chain broken).
pub fn check(entries: &[Entry]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut prev = GENESIS.to_owned();
    for (i, e) in entries.iter().enumerate() {
        let expected = i as i64 + 1;
        if e.seq != expected {
            problems.push(format!(
                "entry {}: expected number {expected} (an entry was removed or inserted)",
                e.seq
            ));
        }
        if e.prev != prev {
            problems.push(format!(
                "entry {}: does not follow the entry before it (removed, inserted or reordered)",
                e.seq
            ));
        }
        if chain_hash(&e.prev, e.seq, &e.event) != e.hash {
            problems.push(format!(
                "entry {}: altered (its hash does not match)",
                e.seq
            ));
        }
        prev = e.hash.clone();
    }
    problems
}

impl AuditStore for AuditLog {
    fn append(&self, event: Event) -> Result<Entry, AuditError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let (seq, prev) = last.map_or((1, GENESIS.to_owned()), |(s, h)| (s + 1, h));
        let hash = chain_hash(&prev, seq, &event);
        tx.execute(
            "INSERT INTO audit (seq, at_unix_ms, actor, role, action, room, source, detail, prev, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            rusqlite::params![
                seq,
                event.at_unix_ms,
                event.actor,
                event.role,
                event.action,
                event.room,
                event.source,
                event.detail,
                prev,
                hash
            ],
        )?;
        tx.commit()?;
        Ok(Entry {
            seq,
            event,
            prev,
            hash,
        })
    }

    fn entries(&self) -> Result<Vec<Entry>, AuditError> {
        let db = self.db();
        // Stored order (rowid), not `seq`: a reordering must show as a broken chain.
        let mut st = db.prepare(
            "SELECT seq, at_unix_ms, actor, role, action, room, source, detail, prev, hash
             FROM audit ORDER BY rowid",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Entry {
                seq: r.get(0)?,
                event: Event {
                    at_unix_ms: r.get(1)?,
                    actor: r.get(2)?,
                    role: r.get(3)?,
                    action: r.get(4)?,
                    room: r.get(5)?,
                    source: r.get(6)?,
                    detail: r.get(7)?,
                },
                prev: r.get(8)?,
                hash: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: i64) -> Event {
        Event {
            at_unix_ms: 1_000 + i,
            actor: format!("dr-{i}"),
            role: "lead".into(),
            action: "join".into(),
            room: "r1".into(),
            source: format!("signalling req={i}"),
            detail: "{}".into(),
        }
    }

    fn log(tag: &str) -> (AuditLog, std::path::PathBuf) {
        let p = std::env::temp_dir().join(format!("medsfu-audit-{}-{tag}.db", std::process::id()));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        (AuditLog::open(&p).unwrap(), p)
    }

    #[test]
    fn an_intact_trail_verifies_across_a_reopen() {
        let (a, p) = log("intact");
        for i in 0..5 {
            let e = a.append(event(i)).unwrap();
            assert_eq!(e.seq, i + 1);
        }
        drop(a);
        let a = AuditLog::open(&p).unwrap();
        a.append(event(5)).unwrap();
        assert_eq!(a.verify().unwrap(), (Vec::new(), 6));
        assert_eq!(a.entries().unwrap()[0].prev, GENESIS);
    }

    #[test]
    fn altered_removed_and_reordered_entries_are_found() {
        let (a, _) = log("tamper");
        for i in 0..6 {
            a.append(event(i)).unwrap();
        }
        let db = a.db();
        db.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 2", [])
            .unwrap();
        drop(db);
        assert_eq!(
            a.verify().unwrap().0,
            vec!["entry 2: altered (its hash does not match)".to_owned()]
        );

        let (a, _) = log("remove");
        for i in 0..6 {
            a.append(event(i)).unwrap();
        }
        a.db()
            .execute("DELETE FROM audit WHERE seq = 4", [])
            .unwrap();
        let (problems, n) = a.verify().unwrap();
        assert_eq!(n, 5);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("entry 5: expected number 4")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("entry 5: does not follow")),
            "{problems:?}"
        );

        // Two entries swapped in storage order, each still internally consistent.
        let (a, _) = log("reorder");
        for i in 0..4 {
            a.append(event(i)).unwrap();
        }
        let all = a.entries().unwrap();
        let db = a.db();
        db.execute("DELETE FROM audit WHERE seq IN (2, 3)", [])
            .unwrap();
        for e in [&all[2], &all[1]] {
            db.execute(
                "INSERT INTO audit (seq, at_unix_ms, actor, role, action, room, source, detail, prev, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                rusqlite::params![
                    e.seq + 100, e.event.at_unix_ms, e.event.actor, e.event.role, e.event.action,
                    e.event.room, e.event.source, e.event.detail, e.prev, e.hash
                ],
            )
            .unwrap();
        }
        drop(db);
        let (problems, _) = a.verify().unwrap();
        assert!(
            problems.iter().any(|p| p.contains("does not follow")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_hash_covers_every_field_unambiguously() {
        let e = event(1);
        let h = chain_hash(GENESIS, 1, &e);
        let mut moved = e.clone();
        moved.actor = "dr-1lead".into();
        moved.role = String::new();
        assert_ne!(
            chain_hash(GENESIS, 1, &moved),
            h,
            "a byte moved across fields"
        );
        assert_ne!(chain_hash(GENESIS, 2, &e), h);
        assert_eq!(chain_hash(GENESIS, 1, &e), h);
    }
}
