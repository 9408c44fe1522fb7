//! Accounts, devices, secrets and lockouts.

use std::fmt;
use std::str::FromStr;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher};

/// What an account is for; the room role follows from it (a consultant becomes the
/// lead of a call by accepting it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AccountRole {
    /// A crew member (doctor, nurse, technician): logs in with a PIN on a device.
    Team,
    /// A teleconsultant: accepts calls (then leads them) or is invited to them.
    Consultant,
    /// A dispatch centre operator.
    Dispatcher,
    /// A system operator.
    Admin,
}

impl AccountRole {
    /// Every account role.
    pub const ALL: [AccountRole; 4] = [
        AccountRole::Team,
        AccountRole::Consultant,
        AccountRole::Dispatcher,
        AccountRole::Admin,
    ];

    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountRole::Team => "team",
            AccountRole::Consultant => "consultant",
            AccountRole::Dispatcher => "dispatcher",
            AccountRole::Admin => "admin",
        }
    }

    /// The kind of secret this role logs in with.
    pub fn secret_kind(self) -> SecretKind {
        match self {
            AccountRole::Team => SecretKind::Pin,
            _ => SecretKind::Password,
        }
    }
}

impl fmt::Display for AccountRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccountRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "lead" {
            return Err(
                "lead is a role in a call, not an account: a consultant becomes lead by \
                 accepting a call or by hand-over"
                    .into(),
            );
        }
        AccountRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown account role {s:?} (team, consultant, dispatcher, admin)")
            })
    }
}

/// A password (staff) or a PIN (crew).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// At least 10 characters.
    Password,
    /// 4 to 8 digits.
    Pin,
}

impl SecretKind {
    /// The name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Password => "password",
            SecretKind::Pin => "pin",
        }
    }

    /// Checks a new secret is acceptable; the error says why not.
    pub fn check(self, secret: &str) -> Result<(), String> {
        match self {
            SecretKind::Password if secret.chars().count() < 10 => {
                Err("passwords have at least 10 characters".into())
            }
            SecretKind::Password if secret.len() > 1024 => {
                Err("passwords have at most 1024 bytes".into())
            }
            SecretKind::Pin
                if !(4..=8).contains(&secret.len())
                    || !secret.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Err("PINs are 4 to 8 digits".into())
            }
            _ => Ok(()),
        }
    }
}

/// An account to create.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Login name (1-64 of `a-z 0-9 . _ -`).
    pub name: String,
    /// What the account is for.
    pub role: AccountRole,
    /// Its password or PIN, in clear (hashed before it is stored).
    pub secret: String,
    /// The name shown to others.
    pub display_name: String,
}

/// An account as stored (without its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// What the account is for.
    pub role: AccountRole,
    /// The name shown to others.
    pub display_name: String,
    /// Disabled by an operator.
    pub disabled: bool,
    /// Tokens issued before this time (ms since 1970) are void: its secret changed then.
    pub tokens_after_ms: i64,
}

/// Lockout rules for wrong secrets.
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    /// Wrong secrets in a row that lock the account.
    pub max_failures: u32,
    /// How long a lockout lasts, ms.
    pub lockout_ms: i64,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            max_failures: 5,
            lockout_ms: 5 * 60 * 1000,
        }
    }
}

/// Why a login was refused. Unknown names and wrong secrets look alike to the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// Unknown account, wrong secret, or the wrong kind of secret.
    #[error("wrong user name or secret")]
    Wrong,
    /// Too many wrong secrets: locked until `until_ms`.
    #[error("account locked after repeated wrong secrets")]
    Locked {
        /// When the lockout ends (ms since 1970).
        until_ms: i64,
    },
    /// Disabled by an operator.
    #[error("account disabled")]
    Disabled,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

impl LoginError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            LoginError::Wrong => "login_failed",
            LoginError::Locked { .. } => "account_locked",
            LoginError::Disabled => "account_disabled",
            LoginError::Store(e) => e.code(),
        }
    }
}

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceKind {
    /// An ambulance's agent (roof camera, monitor, GPS).
    Vehicle,
    /// Smart glasses.
    Glasses,
    /// A crew tablet.
    Tablet,
}

impl DeviceKind {
    /// Every kind.
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Vehicle, DeviceKind::Glasses, DeviceKind::Tablet];

    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Vehicle => "vehicle",
            DeviceKind::Glasses => "glasses",
            DeviceKind::Tablet => "tablet",
        }
    }
}

impl FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeviceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown device kind {s:?} (vehicle, glasses, tablet)"))
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its name (also the identity in its certificate).
    pub name: String,
    /// What it is.
    pub kind: DeviceKind,
    /// Its token no longer works.
    pub revoked: bool,
}

/// Whether `name` is acceptable as an account or device name: 1-64 of `a-z 0-9 . _ -`,
/// not starting with a dot (it appears in URLs, paths and the audit trail).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// An argon2id hash (PHC string) of a secret, with a fresh salt.
pub fn hash_secret(secret: &str) -> Result<String, crate::StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| crate::StoreError::Invalid(format!("hashing failed: {e}")))
}

/// Whether `secret` matches an argon2 PHC hash (a malformed hash matches nothing).
///
/// At most [`checks_at_once`] checks run at a time, process-wide, each in one of as many
/// working memories that are allocated once and reused: argon2 needs 19 MiB per check,
/// and a flood of logins must not hold that many times over (nor leave it in the
/// allocator's arenas). Callers beyond the limit wait here; bound them before (the HTTP
/// layer answers 503 past a short queue).
pub(crate) fn secret_matches(secret: &str, hash: &str) -> bool {
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(alg), Ok(version), Ok(params), Some(salt), Some(expected)) = (
        argon2::Algorithm::try_from(h.algorithm),
        h.version
            .map_or(Ok(argon2::Version::default()), argon2::Version::try_from),
        argon2::Params::try_from(&h),
        h.salt,
        h.hash,
    ) else {
        return false;
    };
    let mut salt_buf = [0u8; argon2::password_hash::Salt::MAX_LENGTH];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        return false;
    }
    let mut out = [0u8; argon2::password_hash::Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let computed = with_memory(blocks, |memory| {
        Argon2::new(alg, version, params)
            .hash_password_into_with_memory(secret.as_bytes(), salt, out, memory)
            .is_ok()
    });
    // `Output`'s equality is constant-time.
    computed && argon2::password_hash::Output::new(out).is_ok_and(|o| o == expected)
}

/// The most memory one check may use (64 MiB in 1 KiB blocks); medsfu's hashes use 19 MiB.
const MAX_BLOCKS: usize = 64 * 1024;

/// How many password checks run at once: one per core, at most four.
pub fn checks_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// The reusable working memories of password checks, and how many are in use.
struct Memories {
    free: std::sync::Mutex<(Vec<Vec<argon2::Block>>, usize)>,
    returned: std::sync::Condvar,
}

/// Runs `f` on a working memory of `blocks` blocks, waiting for one to be free.
fn with_memory<R>(blocks: usize, f: impl FnOnce(&mut [argon2::Block]) -> R) -> R {
    static MEMORIES: std::sync::OnceLock<Memories> = std::sync::OnceLock::new();
    let m = MEMORIES.get_or_init(|| Memories {
        free: std::sync::Mutex::new((Vec::new(), 0)),
        returned: std::sync::Condvar::new(),
    });
    let limit = checks_at_once();
    let mut memory = {
        let mut g = m.free.lock().unwrap_or_else(|p| p.into_inner());
        while g.1 >= limit {
            g = m.returned.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.1 += 1;
        g.0.pop().unwrap_or_default()
    };
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let r = f(&mut memory[..blocks]);
    let mut g = m.free.lock().unwrap_or_else(|p| p.into_inner());
    g.0.push(memory);
    g.1 -= 1;
    m.returned.notify_one();
    r
}

/// A device token: 32 random bytes, hex.
pub(crate) fn new_device_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

/// The stored form of a device token. Tokens are 256 random bits, so a plain SHA-256 is
/// enough (no dictionary to slow down).
pub(crate) fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(token.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hash_with_salt_and_verify() {
        let a = hash_secret("correct horse").unwrap();
        let b = hash_secret("correct horse").unwrap();
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("$argon2id$"));
        assert!(secret_matches("correct horse", &a));
        assert!(!secret_matches(
            "correct horse",
            &a.replace("m=19456", "m=99999999")
        ));
        assert!(!secret_matches(
            "correct horse",
            &a.replace("$argon2id$", "$argon2xx$")
        ));
        assert!(!secret_matches("correct horsE", &a));
        assert!(!secret_matches("correct horse", "not a hash"));
    }

    #[test]
    fn secret_rules_and_names() {
        assert!(SecretKind::Pin.check("1234").is_ok());
        assert!(SecretKind::Pin.check("12a4").is_err());
        assert!(SecretKind::Pin.check("123").is_err());
        assert!(SecretKind::Password.check("short").is_err());
        assert!(SecretKind::Password.check("long enough pw").is_ok());
        assert!(valid_name("dr.novak"));
        assert!(!valid_name("Dr Novak"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
        assert!("lead"
            .parse::<AccountRole>()
            .unwrap_err()
            .contains("accepting"));
        for r in AccountRole::ALL {
            assert_eq!(r.as_str().parse::<AccountRole>(), Ok(r));
        }
        assert_eq!(token_hash("x").len(), 64);
        assert_ne!(new_device_token(), new_device_token());
    }
}
