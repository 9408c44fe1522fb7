//! The embedded SQLite store and its migrations.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use crate::accounts::{new_device_token, secret_matches, token_hash, valid_name};
use crate::{
    hash_secret, Account, Device, DeviceKind, LoginError, LoginPolicy, MemberRecord, NewAccount,
    RoomFilter, RoomRecord, SecretKind, Store, StoreError,
};

/// The schema, one migration per version; only ever append.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE accounts (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            secret_kind TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            display_name TEXT NOT NULL,
            failed_attempts INTEGER NOT NULL DEFAULT 0,
            locked_until_ms INTEGER NOT NULL DEFAULT 0,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE devices (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            revoked INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE rooms (
            name TEXT PRIMARY KEY,
            vehicle TEXT,
            opened_by TEXT NOT NULL,
            status TEXT NOT NULL,
            lead TEXT,
            created_ms INTEGER NOT NULL,
            closed_ms INTEGER
        ) STRICT;
        CREATE TABLE memberships (
            id INTEGER PRIMARY KEY,
            room TEXT NOT NULL REFERENCES rooms(name),
            member TEXT NOT NULL,
            role TEXT NOT NULL,
            joined_ms INTEGER NOT NULL,
            left_ms INTEGER
        ) STRICT;
        CREATE INDEX memberships_room ON memberships(room);",
        ),
        // Lockouts per (account name, source address): a stranger's wrong guesses lock
        // only the stranger out, and an unknown name locks like a known one.
        M::up(
            "CREATE TABLE login_failures (
                name TEXT NOT NULL,
                source TEXT NOT NULL,
                failed INTEGER NOT NULL,
                locked_until_ms INTEGER NOT NULL,
                last_ms INTEGER NOT NULL,
                PRIMARY KEY (name, source)
            ) STRICT;
            CREATE INDEX login_failures_last ON login_failures(last_ms);
            ALTER TABLE accounts ADD COLUMN tokens_after_ms INTEGER NOT NULL DEFAULT 0;",
        ),
    ])
}

/// The SQLite store (one file; WAL, foreign keys on).
pub struct SqliteStore {
    db: Mutex<Connection>,
    /// Logins of one account take turns (by a stripe of its name), so that parallel
    /// guesses cannot all read the same failure count and slip past the lockout.
    login_turns: [Mutex<()>; LOGIN_STRIPES],
}

const LOGIN_STRIPES: usize = 64;

fn stripe(name: &str) -> usize {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % LOGIN_STRIPES as u64) as usize
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it to the
    /// current schema.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations().to_latest(&mut db)?;
        Ok(SqliteStore::with(db))
    }

    fn with(db: Connection) -> SqliteStore {
        SqliteStore {
            db: Mutex::new(db),
            login_turns: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    /// An empty in-memory store (tests, tools).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let mut db = Connection::open_in_memory()?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        migrations().to_latest(&mut db)?;
        Ok(SqliteStore::with(db))
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each call is one
        // statement or one transaction), so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Account, String, String)> {
    let role: String = r.get(1)?;
    Ok((
        Account {
            name: r.get(0)?,
            role: role
                .parse()
                .map_err(|e: String| rusqlite::Error::InvalidColumnName(e))?,
            display_name: r.get(2)?,
            disabled: r.get(3)?,
            tokens_after_ms: r.get(6)?,
        },
        r.get(4)?,
        r.get(5)?,
    ))
}

// The accounts table's own failed_attempts and locked_until_ms columns are no longer
// used: lockouts are per (name, source) in login_failures.
const ACCOUNT_COLUMNS: &str =
    "name, role, display_name, disabled, secret_kind, secret_hash, tokens_after_ms";

fn room_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoomRecord> {
    let status: String = r.get(3)?;
    Ok(RoomRecord {
        name: r.get(0)?,
        vehicle: r.get(1)?,
        opened_by: r.get(2)?,
        status: status
            .parse()
            .map_err(|e: String| rusqlite::Error::InvalidColumnName(e))?,
        lead: r.get(4)?,
        created_ms: r.get(5)?,
        closed_ms: r.get(6)?,
    })
}

const ROOM_COLUMNS: &str = "name, vehicle, opened_by, status, lead, created_ms, closed_ms";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    let kind: String = r.get(1)?;
    Ok(Device {
        name: r.get(0)?,
        kind: kind
            .parse()
            .map_err(|e: String| rusqlite::Error::InvalidColumnName(e))?,
        revoked: r.get(2)?,
    })
}

fn changed(n: usize, what: &str) -> Result<(), StoreError> {
    if n == 0 {
        Err(StoreError::NotFound(what.to_owned()))
    } else {
        Ok(())
    }
}

impl Store for SqliteStore {
    fn add_account(&self, new: &NewAccount, now_ms: i64) -> Result<(), StoreError> {
        if !valid_name(&new.name) {
            return Err(StoreError::Invalid(
                "account names are 1-64 of a-z 0-9 . _ - and do not start with a dot".into(),
            ));
        }
        let kind = new.role.secret_kind();
        kind.check(&new.secret).map_err(StoreError::Invalid)?;
        let hash = hash_secret(&new.secret)?;
        let display = if new.display_name.trim().is_empty() {
            new.name.clone()
        } else {
            new.display_name.trim().to_owned()
        };
        let r = self.db().execute(
            "INSERT INTO accounts (name, role, secret_kind, secret_hash, display_name, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                new.name,
                new.role.as_str(),
                kind.as_str(),
                hash,
                display,
                now_ms
            ],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Exists(format!("account {}", new.name)))
            }
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    fn set_secret(&self, name: &str, secret: &str, now_ms: i64) -> Result<(), StoreError> {
        let account = self
            .account(name)?
            .ok_or_else(|| StoreError::NotFound(format!("account {name}")))?;
        account
            .role
            .secret_kind()
            .check(secret)
            .map_err(StoreError::Invalid)?;
        let hash = hash_secret(secret)?;
        self.db()
            .execute("DELETE FROM login_failures WHERE name = ?1", params![name])?;
        let n = self.db().execute(
            "UPDATE accounts SET secret_hash = ?2, failed_attempts = 0, locked_until_ms = 0,
             tokens_after_ms = ?3 WHERE name = ?1",
            params![name, hash, now_ms],
        )?;
        changed(n, &format!("account {name}"))
    }

    fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let n = self.db().execute(
            // Disabling voids the tokens handed out so far (re-enabling does not bring
            // them back): SQLite's clock, the store takes no time of its own here.
            "UPDATE accounts SET disabled = ?2, tokens_after_ms = CASE WHEN ?2
             THEN CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)
             ELSE tokens_after_ms END WHERE name = ?1",
            params![name, disabled],
        )?;
        changed(n, &format!("account {name}"))
    }

    fn unlock(&self, name: &str) -> Result<(), StoreError> {
        self.db()
            .execute("DELETE FROM login_failures WHERE name = ?1", params![name])?;
        let n = self.db().execute(
            "UPDATE accounts SET failed_attempts = 0, locked_until_ms = 0 WHERE name = ?1",
            params![name],
        )?;
        changed(n, &format!("account {name}"))
    }

    fn locked(&self, now_ms: i64) -> Result<Vec<(String, u32)>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT name, COUNT(*) FROM login_failures WHERE locked_until_ms > ?1
             GROUP BY name ORDER BY name",
        )?;
        let rows = st.query_map(params![now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let db = self.db();
        let row = db
            .query_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?1"),
                params![name],
                account_row,
            )
            .optional()?;
        Ok(row.map(|(a, _, _)| a))
    }

    fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name"
        ))?;
        let rows = st.query_map([], account_row)?;
        rows.map(|r| r.map(|(a, _, _)| a).map_err(StoreError::from))
            .collect()
    }

    fn login(
        &self,
        name: &str,
        secret: &str,
        kind: SecretKind,
        source: &str,
        policy: &LoginPolicy,
        now_ms: i64,
    ) -> Result<Account, LoginError> {
        // Held for the whole check: the count read below is the one written back.
        let _turn = self.login_turns[stripe(name)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (row, locked_until) = {
            let db = self.db();
            // Failures older than a lockout are forgotten (the table stays small).
            db.execute(
                "DELETE FROM login_failures WHERE last_ms < ?1 AND locked_until_ms <= ?2",
                params![now_ms.saturating_sub(policy.lockout_ms), now_ms],
            )
            .map_err(StoreError::from)?;
            let locked_until: i64 = db
                .query_row(
                    "SELECT locked_until_ms FROM login_failures WHERE name = ?1 AND source = ?2",
                    params![name, source],
                    |r| r.get(0),
                )
                .optional()
                .map_err(StoreError::from)?
                .unwrap_or(0);
            let row = db
                .query_row(
                    &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?1"),
                    params![name],
                    account_row,
                )
                .optional()
                .map_err(StoreError::from)?;
            (row, locked_until)
        };
        // The same for known and unknown names: nothing tells whether an account exists.
        if locked_until > now_ms {
            return Err(LoginError::Locked {
                until_ms: locked_until,
            });
        }
        // The hash is checked outside the database lock: argon2 takes tens of milliseconds.
        // An unknown name spends the time a real check takes, so that names cannot be
        // probed by timing.
        let right = match &row {
            Some((_, stored_kind, hash)) => {
                stored_kind == kind.as_str() && secret_matches(secret, hash)
            }
            None => {
                let _ = secret_matches(secret, dummy_hash());
                false
            }
        };
        if let (true, Some((account, _, _))) = (right, row) {
            self.db()
                .execute(
                    "DELETE FROM login_failures WHERE name = ?1 AND source = ?2",
                    params![name, source],
                )
                .map_err(StoreError::from)?;
            // Only who knows the secret learns that the account is disabled.
            if account.disabled {
                return Err(LoginError::Disabled);
            }
            return Ok(account);
        }
        let db = self.db();
        let failed: u32 = db
            .query_row(
                "SELECT failed FROM login_failures WHERE name = ?1 AND source = ?2",
                params![name, source],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::from)?
            .unwrap_or(0);
        let failed = failed.saturating_add(1);
        let (failed, until) = if failed >= policy.max_failures.max(1) {
            (0, now_ms + policy.lockout_ms)
        } else {
            (failed, 0)
        };
        db.execute(
            "INSERT INTO login_failures (name, source, failed, locked_until_ms, last_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name, source) DO UPDATE
             SET failed = ?3, locked_until_ms = ?4, last_ms = ?5",
            params![name, source, failed, until, now_ms],
        )
        .map_err(StoreError::from)?;
        if until > 0 {
            Err(LoginError::Locked { until_ms: until })
        } else {
            Err(LoginError::Wrong)
        }
    }

    fn add_device(&self, name: &str, kind: DeviceKind, now_ms: i64) -> Result<String, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(
                "device names are 1-64 of a-z 0-9 . _ - and do not start with a dot".into(),
            ));
        }
        let token = new_device_token();
        let r = self.db().execute(
            "INSERT INTO devices (name, kind, token_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, kind.as_str(), token_hash(&token), now_ms],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Exists(format!("device {name}")))
            }
            other => other.map(|_| token).map_err(StoreError::from),
        }
    }

    fn device_by_token(&self, token: &str) -> Result<Option<Device>, StoreError> {
        let db = self.db();
        let d = db
            .query_row(
                "SELECT name, kind, revoked FROM devices WHERE token_hash = ?1",
                params![token_hash(token)],
                device_row,
            )
            .optional()?;
        Ok(d.filter(|d| !d.revoked))
    }

    fn revoke_device(&self, name: &str) -> Result<(), StoreError> {
        let n = self.db().execute(
            "UPDATE devices SET revoked = 1 WHERE name = ?1",
            params![name],
        )?;
        changed(n, &format!("device {name}"))
    }

    fn device(&self, name: &str) -> Result<Option<Device>, StoreError> {
        let db = self.db();
        let d = db
            .query_row(
                "SELECT name, kind, revoked FROM devices WHERE name = ?1",
                params![name],
                device_row,
            )
            .optional()?;
        Ok(d)
    }

    fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let db = self.db();
        let mut st = db.prepare("SELECT name, kind, revoked FROM devices ORDER BY name")?;
        let rows = st.query_map([], device_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn put_room(&self, room: &RoomRecord) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO rooms (name, vehicle, opened_by, status, lead, created_ms, closed_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(name) DO UPDATE SET vehicle = ?2, opened_by = ?3, status = ?4,
                 lead = ?5, created_ms = ?6, closed_ms = ?7",
            params![
                room.name,
                room.vehicle,
                room.opened_by,
                room.status.as_str(),
                room.lead,
                room.created_ms,
                room.closed_ms
            ],
        )?;
        Ok(())
    }

    fn room(&self, name: &str) -> Result<Option<RoomRecord>, StoreError> {
        let db = self.db();
        Ok(db
            .query_row(
                &format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE name = ?1"),
                params![name],
                room_row,
            )
            .optional()?)
    }

    fn rooms(&self, closed: bool) -> Result<Vec<RoomRecord>, StoreError> {
        let db = self.db();
        let filter = if closed {
            ""
        } else {
            "WHERE status != 'closed'"
        };
        let mut st = db.prepare(&format!(
            "SELECT {ROOM_COLUMNS} FROM rooms {filter} ORDER BY created_ms DESC, name"
        ))?;
        let rows = st.query_map([], room_row)?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn find_rooms(&self, filter: &RoomFilter) -> Result<Vec<RoomRecord>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {ROOM_COLUMNS} FROM rooms r
             WHERE (?1 IS NULL OR r.vehicle = ?1)
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM memberships m
                                          WHERE m.room = r.name AND m.member = ?2))
               AND (?3 IS NULL OR r.closed_ms IS NULL OR r.closed_ms >= ?3)
               AND (?4 IS NULL OR r.created_ms <= ?4)
             ORDER BY r.created_ms DESC, r.name"
        ))?;
        let rows = st.query_map(
            params![
                filter.vehicle,
                filter.participant,
                filter.from_ms,
                filter.to_ms
            ],
            room_row,
        )?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }

    fn add_member(
        &self,
        room: &str,
        member: &str,
        role: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO memberships (room, member, role, joined_ms) VALUES (?1, ?2, ?3, ?4)",
            params![room, member, role, now_ms],
        )?;
        Ok(())
    }

    fn end_member(&self, room: &str, member: &str, now_ms: i64) -> Result<(), StoreError> {
        let n = self.db().execute(
            "UPDATE memberships SET left_ms = ?3
             WHERE room = ?1 AND member = ?2 AND left_ms IS NULL",
            params![room, member, now_ms],
        )?;
        changed(n, &format!("membership of {member} in {room}"))
    }

    fn set_member_role(&self, room: &str, member: &str, role: &str) -> Result<(), StoreError> {
        let n = self.db().execute(
            "UPDATE memberships SET role = ?3 WHERE room = ?1 AND member = ?2 AND left_ms IS NULL",
            params![room, member, role],
        )?;
        changed(n, &format!("membership of {member} in {room}"))
    }

    fn change_lead(&self, room: &str, from: Option<&str>, to: &str) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(from) = from {
            // A lead who left has no open membership: nothing to change then.
            tx.execute(
                "UPDATE memberships SET role = 'consultant'
                 WHERE room = ?1 AND member = ?2 AND left_ms IS NULL",
                params![room, from],
            )?;
        }
        let n = tx.execute(
            "UPDATE memberships SET role = 'lead'
             WHERE room = ?1 AND member = ?2 AND left_ms IS NULL",
            params![room, to],
        )?;
        changed(n, &format!("membership of {to} in {room}"))?;
        tx.execute(
            "UPDATE rooms SET lead = ?2 WHERE name = ?1",
            params![room, to],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn members(&self, room: &str) -> Result<Vec<MemberRecord>, StoreError> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT room, member, role, joined_ms, left_ms FROM memberships
             WHERE room = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![room], |r| {
            Ok(MemberRecord {
                room: r.get(0)?,
                member: r.get(1)?,
                role: r.get(2)?,
                joined_ms: r.get(3)?,
                left_ms: r.get(4)?,
            })
        })?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }
}

/// A hash checked when the account is unknown, made once with the same parameters as
/// real ones so that it costs the same time.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_secret("no account has this secret").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountRole, RoomStatus};

    fn store_with(role: AccountRole, secret: &str) -> SqliteStore {
        let s = SqliteStore::in_memory().unwrap();
        s.add_account(
            &NewAccount {
                name: "ana".into(),
                role,
                secret: secret.into(),
                display_name: "Dr Ana".into(),
            },
            0,
        )
        .unwrap();
        s
    }

    #[test]
    fn wrong_pins_lock_the_account_for_the_lockout_time_then_it_opens_again() {
        let s = store_with(AccountRole::Team, "4711");
        let p = LoginPolicy {
            max_failures: 3,
            lockout_ms: 60_000,
        };
        let pin = SecretKind::Pin;
        assert!(matches!(
            s.login("ana", "0000", pin, "10.0.0.1", &p, 1000),
            Err(LoginError::Wrong)
        ));
        assert!(matches!(
            s.login("ana", "0001", pin, "10.0.0.1", &p, 1001),
            Err(LoginError::Wrong)
        ));
        assert!(matches!(
            s.login("ana", "0002", pin, "10.0.0.1", &p, 1002),
            Err(LoginError::Locked { until_ms: 61_002 })
        ));
        // Even the right PIN is refused while locked.
        assert!(matches!(
            s.login("ana", "4711", pin, "10.0.0.1", &p, 30_000),
            Err(LoginError::Locked { .. })
        ));
        assert_eq!(s.locked(30_000).unwrap(), vec![("ana".to_owned(), 1)]);
        assert!(s.locked(61_002).unwrap().is_empty(), "the lockout ran out");
        s.login("ana", "4711", pin, "10.0.0.1", &p, 61_002).unwrap();
        // A good login resets the count: two more wrong ones do not lock.
        let _ = s.login("ana", "1", pin, "10.0.0.1", &p, 70_000);
        let _ = s.login("ana", "2", pin, "10.0.0.1", &p, 70_001);
        assert!(s.login("ana", "4711", pin, "10.0.0.1", &p, 70_002).is_ok());
    }

    #[test]
    fn a_strangers_guesses_lock_only_the_stranger_and_unknown_names_lock_alike() {
        let s = store_with(AccountRole::Team, "4711");
        let p = LoginPolicy {
            max_failures: 3,
            lockout_ms: 60_000,
        };
        let pin = SecretKind::Pin;
        let guess = |name: &str, source: &str, at: i64| {
            s.login(name, "0000", pin, source, &p, at)
                .map(|_| ())
                .unwrap_err()
                .code()
        };
        // The same answers for ana (who exists) and for nobody (who does not).
        for name in ["ana", "nobody"] {
            let codes: Vec<&str> = (0..4).map(|i| guess(name, "203.0.113.9", i)).collect();
            assert_eq!(
                codes,
                [
                    "login_failed",
                    "login_failed",
                    "account_locked",
                    "account_locked"
                ],
                "{name}"
            );
        }
        // Ana at her own tablet is not locked out by the stranger.
        assert!(s.login("ana", "4711", pin, "10.0.0.7", &p, 10).is_ok());
        // The stranger still is, even with the right PIN, until the lockout ends...
        assert_eq!(
            s.login("ana", "4711", pin, "203.0.113.9", &p, 20)
                .map(|_| ())
                .unwrap_err()
                .code(),
            "account_locked"
        );
        assert!(s
            .login("ana", "4711", pin, "203.0.113.9", &p, 60_003)
            .is_ok());
        // ...or an operator unlocks the name.
        for i in 0..3 {
            guess("ana", "198.51.100.1", 70_000 + i);
        }
        s.unlock("ana").unwrap();
        assert!(s
            .login("ana", "4711", pin, "198.51.100.1", &p, 70_010)
            .is_ok());
        // Old failures are forgotten: the table does not grow with every name tried.
        for i in 0..50 {
            guess(&format!("probe{i}"), "203.0.113.10", 100_000);
        }
        let _ = guess("x", "203.0.113.10", 100_000 + 2 * 60_000);
        let rows: i64 = s
            .db()
            .query_row("SELECT count(*) FROM login_failures", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "only the newest failure is remembered");
    }

    #[test]
    fn parallel_guesses_get_no_more_tries_than_the_lockout_allows() {
        let s = std::sync::Arc::new(store_with(AccountRole::Team, "4711"));
        let p = LoginPolicy {
            max_failures: 3,
            lockout_ms: 60_000,
        };
        let tries: Vec<_> = (0..12)
            .map(|i| {
                let (s, p) = (s.clone(), p.clone());
                std::thread::spawn(move || {
                    s.login(
                        "ana",
                        &format!("{:04}", i),
                        SecretKind::Pin,
                        "10.0.0.1",
                        &p,
                        1000,
                    )
                })
            })
            .collect();
        let results: Vec<_> = tries.into_iter().map(|t| t.join().unwrap()).collect();
        let checked = results
            .iter()
            .filter(|r| matches!(r, Err(LoginError::Wrong)))
            .count();
        let locked = results
            .iter()
            .filter(|r| matches!(r, Err(LoginError::Locked { .. })))
            .count();
        // Two wrong PINs are checked; the third locks; the other nine find it locked.
        assert_eq!((checked, locked), (2, 10), "{results:?}");
    }

    #[test]
    fn unknown_names_wrong_kinds_and_disabled_accounts_are_refused() {
        let s = store_with(AccountRole::Consultant, "long password 1");
        let p = LoginPolicy::default();
        assert!(matches!(
            s.login(
                "bob",
                "long password 1",
                SecretKind::Password,
                "10.0.0.1",
                &p,
                0
            ),
            Err(LoginError::Wrong)
        ));
        assert!(matches!(
            s.login("ana", "long password 1", SecretKind::Pin, "10.0.0.1", &p, 0),
            Err(LoginError::Wrong)
        ));
        assert!(s
            .login(
                "ana",
                "long password 1",
                SecretKind::Password,
                "10.0.0.1",
                &p,
                0
            )
            .is_ok());
        s.set_disabled("ana", true).unwrap();
        assert!(matches!(
            s.login(
                "ana",
                "long password 1",
                SecretKind::Password,
                "10.0.0.1",
                &p,
                0
            ),
            Err(LoginError::Disabled)
        ));
    }

    #[test]
    fn accounts_are_unique_and_checked() {
        let s = store_with(AccountRole::Team, "4711");
        let again = NewAccount {
            name: "ana".into(),
            role: AccountRole::Team,
            secret: "1234".into(),
            display_name: String::new(),
        };
        assert_eq!(
            s.add_account(&again, 0).unwrap_err().code(),
            "already_exists"
        );
        let weak = NewAccount {
            name: "bob".into(),
            role: AccountRole::Admin,
            secret: "1234".into(),
            display_name: String::new(),
        };
        assert_eq!(s.add_account(&weak, 0).unwrap_err().code(), "invalid");
        assert_eq!(s.accounts().unwrap().len(), 1);
        assert_eq!(s.account("ana").unwrap().unwrap().display_name, "Dr Ana");
        s.set_secret("ana", "9999", 5_000).unwrap();
        assert_eq!(s.account("ana").unwrap().unwrap().tokens_after_ms, 5_000);
        assert!(s
            .login(
                "ana",
                "9999",
                SecretKind::Pin,
                "10.0.0.1",
                &LoginPolicy::default(),
                0
            )
            .is_ok());
    }

    #[test]
    fn device_tokens_are_stored_hashed_and_revocable() {
        let s = SqliteStore::in_memory().unwrap();
        let t = s.add_device("amb-7", DeviceKind::Tablet, 0).unwrap();
        assert_eq!(s.device_by_token(&t).unwrap().unwrap().name, "amb-7");
        assert!(s.device_by_token("guess").unwrap().is_none());
        let stored: String = s
            .db()
            .query_row("SELECT token_hash FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, t, "the token itself is never stored");
        s.revoke_device("amb-7").unwrap();
        assert!(s.device_by_token(&t).unwrap().is_none());
        assert!(s.devices().unwrap()[0].revoked);
    }

    #[test]
    fn rooms_and_memberships_keep_their_history() {
        let s = SqliteStore::in_memory().unwrap();
        let mut r = RoomRecord {
            name: "call-1".into(),
            vehicle: Some("amb-7".into()),
            opened_by: "amb-7".into(),
            status: RoomStatus::Ringing,
            lead: None,
            created_ms: 5,
            closed_ms: None,
        };
        s.put_room(&r).unwrap();
        s.add_member("call-1", "amb-7", "vehicle", 5).unwrap();
        s.add_member("call-1", "ana", "lead", 6).unwrap();
        s.add_member("call-1", "bob", "consultant", 7).unwrap();
        s.set_member_role("call-1", "ana", "lead").unwrap();
        s.change_lead("call-1", Some("ana"), "bob").unwrap();
        assert_eq!(
            s.change_lead("call-1", Some("bob"), "nobody")
                .unwrap_err()
                .code(),
            "not_found",
            "a failed hand-over changes nothing"
        );
        s.end_member("call-1", "ana", 9).unwrap();
        assert_eq!(
            s.end_member("call-1", "ana", 10).unwrap_err().code(),
            "not_found"
        );
        r.status = RoomStatus::Closed;
        r.lead = Some("bob".into());
        r.closed_ms = Some(11);
        s.put_room(&r).unwrap();
        assert_eq!(s.room("call-1").unwrap().unwrap(), r);
        assert!(s.rooms(false).unwrap().is_empty());
        assert_eq!(s.rooms(true).unwrap().len(), 1);
        let m = s.members("call-1").unwrap();
        let v: Vec<_> = m
            .iter()
            .map(|m| (m.member.as_str(), m.role.as_str(), m.left_ms))
            .collect();
        assert_eq!(
            v,
            [
                ("amb-7", "vehicle", None),
                ("ana", "consultant", Some(9)),
                ("bob", "lead", None)
            ]
        );
        // Finding it again: by vehicle, by participant, by time.
        let find = |f: RoomFilter| -> Vec<String> {
            s.find_rooms(&f)
                .unwrap()
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        let by = |vehicle: Option<&str>, participant: Option<&str>, from, to| RoomFilter {
            vehicle: vehicle.map(str::to_owned),
            participant: participant.map(str::to_owned),
            from_ms: from,
            to_ms: to,
        };
        assert_eq!(find(by(Some("amb-7"), None, None, None)), ["call-1"]);
        assert!(find(by(Some("amb-8"), None, None, None)).is_empty());
        assert_eq!(
            find(by(None, Some("ana"), None, None)),
            ["call-1"],
            "a past member"
        );
        assert!(find(by(None, Some("eve"), None, None)).is_empty());
        assert_eq!(find(by(None, None, Some(11), Some(11))), ["call-1"]);
        assert!(
            find(by(None, None, Some(12), None)).is_empty(),
            "closed before"
        );
        assert!(
            find(by(None, None, None, Some(4))).is_empty(),
            "opened after"
        );
        // A membership of a room that does not exist is refused by the schema.
        assert!(s.add_member("nowhere", "x", "team", 0).is_err());
    }

    #[test]
    fn a_database_file_is_migrated_once_and_reopens_with_its_data() {
        let dir = std::env::temp_dir().join(format!("medsfu-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("medsfu.db");
        let _ = std::fs::remove_file(&path);
        {
            let s = SqliteStore::open(&path).unwrap();
            s.add_device("amb-1", DeviceKind::Vehicle, 0).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.devices().unwrap().len(), 1);
        let v: i64 = s
            .db()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2, "two migrations: the schema, then per-source lockouts");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
