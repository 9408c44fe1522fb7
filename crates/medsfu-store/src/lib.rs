//! medsfu's records: accounts (with argon2 password and PIN hashes and lockouts),
//! devices (with hashed device tokens), rooms and their memberships.
//!
//! The default store is embedded SQLite ([`SqliteStore`]), its schema kept by numbered
//! migrations; everything goes through [`Store`] so that a shared database (PostgreSQL)
//! can take its place when several nodes serve one centre. Time is always an argument
//! (`now_ms`, milliseconds since 1970), never read here.

#![forbid(unsafe_code)]

mod accounts;
mod rooms;
mod sqlite;

pub use accounts::{
    checks_at_once, hash_secret, valid_name, Account, AccountRole, Device, DeviceKind, LoginError,
    LoginPolicy, NewAccount, SecretKind,
};
pub use rooms::{MemberRecord, RoomFilter, RoomRecord, RoomStatus};
pub use sqlite::SqliteStore;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("database migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// The name is already taken.
    #[error("{0} already exists")]
    Exists(String),
    /// No such record.
    #[error("{0} not found")]
    NotFound(String),
    /// A value is not acceptable (the message says which and why).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Db(_) | StoreError::Migration(_) => "store_unavailable",
            StoreError::Exists(_) => "already_exists",
            StoreError::NotFound(_) => "not_found",
            StoreError::Invalid(_) => "invalid",
        }
    }
}

/// Everything medsfu keeps about accounts, devices and rooms. Calls block (run them off
/// an async runtime's threads).
pub trait Store: Send + Sync {
    /// Creates an account; its secret is hashed here.
    fn add_account(&self, new: &NewAccount, now_ms: i64) -> Result<(), StoreError>;
    /// Replaces an account's secret, lifts any lockout, and voids the tokens issued before
    /// `now_ms`.
    fn set_secret(&self, name: &str, secret: &str, now_ms: i64) -> Result<(), StoreError>;
    /// Disables or re-enables an account.
    fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError>;
    /// Lifts a lockout.
    fn unlock(&self, name: &str) -> Result<(), StoreError>;
    /// Names locked at `now_ms` (known or not), each with the number of source addresses
    /// it is locked for.
    fn locked(&self, now_ms: i64) -> Result<Vec<(String, u32)>, StoreError>;
    /// An account by name.
    fn account(&self, name: &str) -> Result<Option<Account>, StoreError>;
    /// Every account, by name.
    fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// Checks a secret from `source` (the caller's address); counts failures and locks
    /// that name for that source per `policy`, whether or not the account exists.
    fn login(
        &self,
        name: &str,
        secret: &str,
        kind: SecretKind,
        source: &str,
        policy: &LoginPolicy,
        now_ms: i64,
    ) -> Result<Account, LoginError>;

    /// Registers a device; returns its token (shown once, stored only hashed).
    fn add_device(&self, name: &str, kind: DeviceKind, now_ms: i64) -> Result<String, StoreError>;
    /// The device a token belongs to, unless revoked or unknown.
    fn device_by_token(&self, token: &str) -> Result<Option<Device>, StoreError>;
    /// Revokes a device's token.
    fn revoke_device(&self, name: &str) -> Result<(), StoreError>;
    /// A device by name (revoked ones too).
    fn device(&self, name: &str) -> Result<Option<Device>, StoreError>;
    /// Every device, by name.
    fn devices(&self) -> Result<Vec<Device>, StoreError>;

    /// Creates or updates a room's record.
    fn put_room(&self, room: &RoomRecord) -> Result<(), StoreError>;
    /// A room by name.
    fn room(&self, name: &str) -> Result<Option<RoomRecord>, StoreError>;
    /// Rooms, newest first; only those not closed unless `closed` is set.
    fn rooms(&self, closed: bool) -> Result<Vec<RoomRecord>, StoreError>;
    /// Rooms (closed ones too) matching `filter`, newest first: finding an intervention.
    fn find_rooms(&self, filter: &RoomFilter) -> Result<Vec<RoomRecord>, StoreError>;
    /// Records that `member` joined `room`'s membership with `role`.
    fn add_member(
        &self,
        room: &str,
        member: &str,
        role: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Records that `member` left `room`'s membership.
    fn end_member(&self, room: &str, member: &str, now_ms: i64) -> Result<(), StoreError>;
    /// Records a member's new role.
    fn set_member_role(&self, room: &str, member: &str, role: &str) -> Result<(), StoreError>;
    /// Records a lead hand-over in one transaction: `from` (if still a member) becomes a
    /// consultant, `to` the lead, and the room names `to` as its lead.
    fn change_lead(&self, room: &str, from: Option<&str>, to: &str) -> Result<(), StoreError>;
    /// A room's memberships, current and past, in the order they began.
    fn members(&self, room: &str) -> Result<Vec<MemberRecord>, StoreError>;
}
