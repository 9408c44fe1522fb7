//! medsfu's audit trail: who did what, when, where from, to which room, for every access
//! to patient data (join, history replay, telemetry stream, recording, screenshot, ECG
//! snapshot, export) and every change (recording, camera).
//!
//! Entries are append-only and hash-chained: each holds an HMAC-SHA-256, under a key kept
//! outside the database, of the previous entry's hash and its own fields, so
//! [`AuditLog::verify`] finds any entry altered, removed, inserted or reordered after the
//! fact, and someone with the database alone cannot write a consistent new chain. The
//! chain's head (its last number and hash, authenticated with the same key) is kept in a
//! file beside the database, so that entries cut off the end are found too. The store is
//! embedded SQLite behind [`AuditStore`], so that a shared database can take its place for
//! several nodes.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The key of the chain's MACs: 32 random bytes kept outside the database.
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl AuditKey {
    /// A key of these bytes.
    pub fn new(bytes: [u8; 32]) -> AuditKey {
        AuditKey(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length: this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

/// The hash "before" the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why the audit trail failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The database refused.
    #[error("audit database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The head anchor could not be written or read.
    #[error("audit head anchor {path}: {source}")]
    Anchor {
        /// The anchor file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

impl AuditError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            AuditError::Db(_) | AuditError::Anchor { .. } => "audit_unavailable",
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
    /// Whether the hash is keyed (an HMAC); entries of trails from before keys were
    /// plain SHA-256, and may only come first.
    pub keyed: bool,
}

/// The unkeyed chain hash of trails written before keys: SHA-256 over the previous hash
/// and every field, each length-prefixed so that no two different entries encode alike.
pub fn chain_hash(prev: &str, seq: i64, e: &Event) -> String {
    let mut h = Sha256::new();
    feed(&mut h, prev, seq, e);
    hex(&h.finalize())
}

/// The keyed chain hash: HMAC-SHA-256 under `key` of what [`chain_hash`] hashes.
pub fn keyed_chain_hash(key: &AuditKey, prev: &str, seq: i64, e: &Event) -> String {
    let mut h = key.mac();
    feed(&mut h, prev, seq, e);
    hex(&h.finalize().into_bytes())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn feed(h: &mut impl sha2::digest::Update, prev: &str, seq: i64, e: &Event) {
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
        h.update(&(field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
}

/// The MAC of a head anchor: the chain's last number and hash.
fn head_mac(key: &AuditKey, seq: i64, hash: &str) -> String {
    let mut h = key.mac();
    Mac::update(&mut h, b"medsfu audit head\0");
    Mac::update(&mut h, seq.to_string().as_bytes());
    Mac::update(&mut h, b"\0");
    Mac::update(&mut h, hash.as_bytes());
    hex(&h.finalize().into_bytes())
}

/// The chain's head as its anchor file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    seq: i64,
    hash: String,
    mac: String,
}

impl Head {
    fn parse(text: &str) -> Option<Head> {
        let mut w = text.split_whitespace();
        let head = Head {
            seq: w.next()?.parse().ok()?,
            hash: w.next()?.to_owned(),
            mac: w.next()?.to_owned(),
        };
        w.next().is_none().then_some(head)
    }
}

/// Where entries are kept.
pub trait AuditStore: Send + Sync {
    /// Appends an event as the next entry; returns it.
    fn append(&self, event: Event) -> Result<Entry, AuditError>;
    /// Every entry, in the order stored.
    fn entries(&self) -> Result<Vec<Entry>, AuditError>;
}

/// The audit trail in an embedded SQLite database, with its head anchor beside it.
pub struct AuditLog {
    db: Mutex<rusqlite::Connection>,
    key: AuditKey,
    /// `<database>-head`: the chain's last number and hash, with their MAC.
    head: PathBuf,
}

/// The head anchor file of the trail in `db`.
pub fn head_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-head");
    PathBuf::from(p)
}

impl AuditLog {
    /// Opens (or creates) the trail in the database file `path`, chaining new entries
    /// under `key`.
    pub fn open(path: &Path, key: AuditKey) -> Result<AuditLog, AuditError> {
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
        // Trails from before keys lack the column: their entries stay unkeyed.
        let has_keyed: bool = db.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('audit') WHERE name = 'keyed'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_keyed {
            db.execute_batch("ALTER TABLE audit ADD COLUMN keyed INTEGER NOT NULL DEFAULT 0;")?;
        }
        Ok(AuditLog {
            db: Mutex::new(db),
            key,
            head: head_path(path),
        })
    }

    /// Whether the trail holds keyed entries (then only its key verifies it).
    pub fn has_keyed_entries(&self) -> Result<bool, AuditError> {
        Ok(self.db().query_row(
            "SELECT EXISTS(SELECT 1 FROM audit WHERE keyed = 1)",
            [],
            |r| r.get(0),
        )?)
    }

    fn write_head(&self, seq: i64, hash: &str) -> Result<(), AuditError> {
        let err = |source| AuditError::Anchor {
            path: self.head.clone(),
            source,
        };
        let mut tmp = self.head.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let line = format!("{seq} {hash} {}\n", head_mac(&self.key, seq, hash));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(line.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.head).map_err(err)?;
        Ok(())
    }

    fn read_head(&self) -> Result<Option<String>, AuditError> {
        match std::fs::read_to_string(&self.head) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuditError::Anchor {
                path: self.head.clone(),
                source,
            }),
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // A panic elsewhere while holding the lock leaves a usable connection.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Walks the whole trail and checks its end against the head anchor; returns what is
    /// wrong with it (empty: intact) and how many entries it has.
    pub fn verify(&self) -> Result<(Vec<String>, usize), AuditError> {
        let entries = self.entries()?;
        let mut problems = check(&self.key, &entries);
        problems.extend(check_head(
            &self.key,
            &entries,
            self.read_head()?.as_deref(),
        ));
        Ok((problems, entries.len()))
    }
}

/// What is wrong with the end of the trail, given its head anchor's text (none: no anchor
/// file). The anchor names the last entry written; at most one entry may follow it (a
/// crash after the entry was stored and before the anchor was).
fn check_head(key: &AuditKey, entries: &[Entry], anchor: Option<&str>) -> Vec<String> {
    let keyed = entries.iter().any(|e| e.keyed);
    let Some(text) = anchor else {
        return if keyed {
            vec![
                "head anchor missing: the end of the trail cannot be checked (was it deleted?)"
                    .to_owned(),
            ]
        } else {
            Vec::new()
        };
    };
    let Some(head) = Head::parse(text) else {
        return vec!["head anchor unreadable".to_owned()];
    };
    if head_mac(key, head.seq, &head.hash) != head.mac {
        return vec!["head anchor forged or written under another key".to_owned()];
    }
    let last = entries.last().map_or(0, |e| e.seq);
    if head.seq > last {
        return vec![format!(
            "the trail ends at entry {last} but its head anchor records entry {}: {} entr{} removed from the end",
            head.seq,
            head.seq - last,
            if head.seq - last == 1 { "y was" } else { "ies were" }
        )];
    }
    let at = entries.iter().find(|e| e.seq == head.seq);
    if head.seq > 0 && at.is_none_or(|e| e.hash != head.hash) {
        return vec![format!(
            "entry {}: not the entry the head anchor records (the end was rewritten)",
            head.seq
        )];
    }
    if last > head.seq + 1 {
        return vec![format!(
            "entries {}-{last} follow the head anchor's entry {}: added without the key",
            head.seq + 2,
            head.seq
        )];
    }
    Vec::new()
}

/// Finds entries altered (hash does not match), removed or inserted (numbering or chain
/// broken) or reordered (chain broken). Unkeyed entries (from before keys) may only come
/// first.
pub fn check(key: &AuditKey, entries: &[Entry]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut prev = GENESIS.to_owned();
    let mut seen_keyed = false;
    for (i, e) in entries.iter().enumerate() {
        if e.keyed {
            seen_keyed = true;
        } else if seen_keyed {
            problems.push(format!(
                "entry {}: unkeyed after keyed entries (written without the key)",
                e.seq
            ));
        }
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
        let hash = if e.keyed {
            keyed_chain_hash(key, &e.prev, e.seq, &e.event)
        } else {
            chain_hash(&e.prev, e.seq, &e.event)
        };
        if hash != e.hash {
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
        // The server and an operator's command share the trail: one writer at a time from
        // the entry to its anchor, so that the anchor never goes back.
        let lock_path = {
            let mut p = self.head.as_os_str().to_owned();
            p.push(".lock");
            PathBuf::from(p)
        };
        let lock_err = |source| AuditError::Anchor {
            path: lock_path.clone(),
            source,
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(lock_err)?;
        lock.lock().map_err(lock_err)?;
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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
        let hash = keyed_chain_hash(&self.key, &prev, seq, &event);
        tx.execute(
            "INSERT INTO audit (seq, at_unix_ms, actor, role, action, room, source, detail, prev, hash, keyed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1)",
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
        // After the commit: a crash in between leaves the trail one entry past its anchor,
        // which verify accepts (that entry's keyed hash still proves it); an anchor ahead
        // of the trail always means entries were cut off.
        self.write_head(seq, &hash)?;
        drop(lock);
        Ok(Entry {
            seq,
            event,
            prev,
            hash,
            keyed: true,
        })
    }

    fn entries(&self) -> Result<Vec<Entry>, AuditError> {
        let db = self.db();
        // Stored order (rowid), not `seq`: a reordering must show as a broken chain.
        let mut st = db.prepare(
            "SELECT seq, at_unix_ms, actor, role, action, room, source, detail, prev, hash, keyed
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
                keyed: r.get(10)?,
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

    fn key() -> AuditKey {
        AuditKey::new([7; 32])
    }

    fn log(tag: &str) -> (AuditLog, std::path::PathBuf) {
        let p = std::env::temp_dir().join(format!("medsfu-audit-{}-{tag}.db", std::process::id()));
        for ext in ["", "-wal", "-shm", "-head", "-head.lock"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        (AuditLog::open(&p, key()).unwrap(), p)
    }

    #[test]
    fn entries_cut_off_the_end_are_found_by_the_head_anchor() {
        let (a, p) = log("truncate");
        for i in 0..12 {
            a.append(event(i)).unwrap();
        }
        assert_eq!(a.verify().unwrap(), (Vec::new(), 12));
        // Deleting the last 10 entries leaves a consistent chain: only the anchor knows.
        a.db()
            .execute("DELETE FROM audit WHERE seq > 2", [])
            .unwrap();
        let (problems, n) = a.verify().unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            problems,
            vec!["the trail ends at entry 2 but its head anchor records entry 12: 10 entries were removed from the end".to_owned()]
        );
        // Removing the anchor too is said, not taken for a fresh trail.
        std::fs::remove_file(head_path(&p)).unwrap();
        assert_eq!(
            a.verify().unwrap().0,
            vec![
                "head anchor missing: the end of the trail cannot be checked (was it deleted?)"
                    .to_owned()
            ]
        );
        // A rewritten anchor without the key is a forgery.
        std::fs::write(
            head_path(&p),
            format!("2 {} {}\n", a.entries().unwrap()[1].hash, "0".repeat(64)),
        )
        .unwrap();
        assert_eq!(
            a.verify().unwrap().0,
            vec!["head anchor forged or written under another key".to_owned()]
        );
    }

    #[test]
    fn a_chain_rewritten_without_the_key_does_not_verify() {
        let (a, p) = log("rekey");
        for i in 0..3 {
            a.append(event(i)).unwrap();
        }
        // Someone with the database but not the key rewrites entry 2 and re-chains with
        // plain SHA-256, or with a key of their own.
        let all = a.entries().unwrap();
        let mut forged = all[1].event.clone();
        forged.actor = "nobody".into();
        let h2 = keyed_chain_hash(&AuditKey::new([1; 32]), &all[0].hash, 2, &forged);
        a.db()
            .execute(
                "UPDATE audit SET actor = 'nobody', hash = ?1 WHERE seq = 2",
                [&h2],
            )
            .unwrap();
        let problems = a.verify().unwrap().0;
        assert!(
            problems
                .iter()
                .any(|p| p == "entry 2: altered (its hash does not match)"),
            "{problems:?}"
        );
        // The right key, reopened later, verifies what it wrote.
        let (b, _) = log("rekey-2");
        b.append(event(0)).unwrap();
        drop(b);
        let p2 = p.with_file_name(
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .replace("rekey", "rekey-2"),
        );
        assert_eq!(
            AuditLog::open(&p2, key()).unwrap().verify().unwrap(),
            (Vec::new(), 1)
        );
        assert!(!AuditLog::open(&p2, AuditKey::new([1; 32]))
            .unwrap()
            .verify()
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn a_trail_from_before_keys_goes_on_keyed_and_still_verifies() {
        let (a, _) = log("legacy");
        // Two entries as an older medsfu wrote them: plain SHA-256, no `keyed` flag.
        let db = a.db();
        let mut prev = GENESIS.to_owned();
        for seq in 1..=2 {
            let e = event(seq);
            let h = chain_hash(&prev, seq, &e);
            db.execute(
                "INSERT INTO audit (seq, at_unix_ms, actor, role, action, room, source, detail, prev, hash, keyed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0)",
                rusqlite::params![seq, e.at_unix_ms, e.actor, e.role, e.action, e.room, e.source, e.detail, prev, h],
            )
            .unwrap();
            prev = h;
        }
        drop(db);
        assert!(!a.has_keyed_entries().unwrap());
        assert_eq!(a.verify().unwrap(), (Vec::new(), 2));
        a.append(event(3)).unwrap();
        assert!(a.has_keyed_entries().unwrap());
        assert_eq!(a.verify().unwrap(), (Vec::new(), 3));
        // An unkeyed entry after keyed ones is a forgery.
        let last = a.entries().unwrap().pop().unwrap();
        let e = event(4);
        let h = chain_hash(&last.hash, 4, &e);
        a.db()
            .execute(
                "INSERT INTO audit (seq, at_unix_ms, actor, role, action, room, source, detail, prev, hash, keyed)
                 VALUES (4, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0)",
                rusqlite::params![e.at_unix_ms, e.actor, e.role, e.action, e.room, e.source, e.detail, last.hash, h],
            )
            .unwrap();
        let problems = a.verify().unwrap().0;
        assert!(
            problems
                .iter()
                .any(|p| p == "entry 4: unkeyed after keyed entries (written without the key)"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_intact_trail_verifies_across_a_reopen() {
        let (a, p) = log("intact");
        for i in 0..5 {
            let e = a.append(event(i)).unwrap();
            assert_eq!(e.seq, i + 1);
        }
        drop(a);
        let a = AuditLog::open(&p, key()).unwrap();
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
                "INSERT INTO audit (seq, at_unix_ms, actor, role, action, room, source, detail, prev, hash, keyed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1)",
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
        let k = keyed_chain_hash(&key(), GENESIS, 1, &e);
        assert_ne!(keyed_chain_hash(&key(), GENESIS, 1, &moved), k);
        assert_ne!(keyed_chain_hash(&AuditKey::new([8; 32]), GENESIS, 1, &e), k);
        assert_ne!(k, h);
    }
}
