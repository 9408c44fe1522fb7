//! `medsfu user ...` and `medsfu device ...`: accounts and devices from the shell.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::Subcommand;
use medsfu_store::{AccountRole, DeviceKind, NewAccount, SqliteStore, Store};

use crate::config::Config;

/// The store of accounts, devices and rooms, in the data directory.
pub fn store_path(cfg: &Config) -> PathBuf {
    cfg.data.dir.join("medsfu.db")
}

/// Opens the store, creating the data directory and database if needed.
pub fn open_store(cfg: &Config) -> Result<SqliteStore> {
    std::fs::create_dir_all(&cfg.data.dir)
        .with_context(|| format!("creating {}", cfg.data.dir.display()))?;
    let path = store_path(cfg);
    SqliteStore::open(&path).with_context(|| format!("database {}", path.display()))
}

#[derive(Subcommand)]
pub enum UserAction {
    /// Create an account; its password (staff) or PIN (crew) is read from standard input.
    Add {
        /// Login name (a-z 0-9 . _ -).
        name: String,
        /// team (crew, PIN), consultant, dispatcher or admin (password).
        #[arg(long)]
        role: String,
        /// The name shown to others.
        #[arg(long, default_value = "")]
        display_name: String,
    },
    /// List accounts.
    List,
    /// Set a new password or PIN (read from standard input); lifts a lockout.
    Passwd {
        /// Login name.
        name: String,
    },
    /// Lift a lockout after repeated wrong secrets.
    Unlock {
        /// Login name.
        name: String,
    },
    /// Disable an account (it can no longer log in).
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled account.
    Enable {
        /// Login name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum DeviceAction {
    /// Register a device and print its token (shown once; only its hash is kept).
    Add {
        /// Device name.
        name: String,
        /// vehicle, glasses or tablet.
        #[arg(long, default_value = "tablet")]
        kind: String,
    },
    /// List devices.
    List,
    /// Revoke a device's token.
    Revoke {
        /// Device name.
        name: String,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads a secret: one line of standard input (prompted on the terminal).
fn read_secret(what: &str) -> Result<String> {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        eprint!("{what}: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the secret from standard input")?;
    let secret = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!secret.is_empty(), "no {what} given on standard input");
    Ok(secret)
}

fn what_secret(role: AccountRole) -> &'static str {
    match role.secret_kind() {
        medsfu_store::SecretKind::Pin => "PIN",
        _ => "password",
    }
}

/// Runs a `user` subcommand.
pub fn user(cfg: &Config, action: UserAction) -> Result<()> {
    let store = open_store(cfg)?;
    let audit = crate::open_audit(cfg)?;
    let (action_name, target) = match action {
        UserAction::Add {
            name,
            role,
            display_name,
        } => {
            let role: AccountRole = role.parse().map_err(anyhow::Error::msg)?;
            let secret = read_secret(what_secret(role))?;
            store.add_account(
                &NewAccount {
                    name: name.clone(),
                    role,
                    secret,
                    display_name,
                },
                now_ms(),
            )?;
            println!("account {name} ({role}) created");
            ("user_add", name)
        }
        UserAction::List => {
            let locked: std::collections::HashMap<String, u32> =
                store.locked(now_ms())?.into_iter().collect();
            for a in store.accounts()? {
                let mut state = String::new();
                if a.disabled {
                    state.push_str(" disabled");
                }
                match locked.get(&a.name) {
                    Some(1) => state.push_str(" locked (from one address)"),
                    Some(n) => state.push_str(&format!(" locked (from {n} addresses)")),
                    None => {}
                }
                println!("{}\t{}\t{}{state}", a.name, a.role, a.display_name);
            }
            return Ok(());
        }
        UserAction::Passwd { name } => {
            let account = store
                .account(&name)?
                .with_context(|| format!("no account {name}"))?;
            let secret = read_secret(what_secret(account.role))?;
            store.set_secret(&name, &secret, now_ms())?;
            println!("{} of {name} changed", what_secret(account.role));
            ("user_passwd", name)
        }
        UserAction::Unlock { name } => {
            store.unlock(&name)?;
            println!("account {name} unlocked");
            ("user_unlock", name)
        }
        UserAction::Disable { name } => {
            store.set_disabled(&name, true)?;
            println!("account {name} disabled");
            ("user_disable", name)
        }
        UserAction::Enable { name } => {
            store.set_disabled(&name, false)?;
            println!("account {name} enabled");
            ("user_enable", name)
        }
    };
    crate::audit_cli(&audit, action_name, serde_json::json!({ "user": target }))
}

/// Runs a `device` subcommand.
pub fn device(cfg: &Config, action: DeviceAction) -> Result<()> {
    let store = open_store(cfg)?;
    let audit = crate::open_audit(cfg)?;
    let (action_name, target) = match action {
        DeviceAction::Add { name, kind } => {
            let kind: DeviceKind = kind.parse().map_err(anyhow::Error::msg)?;
            let token = store.add_device(&name, kind, now_ms())?;
            println!("{token}");
            ("device_add", name)
        }
        DeviceAction::List => {
            for d in store.devices()? {
                let state = if d.revoked { "\trevoked" } else { "" };
                println!("{}\t{}{state}", d.name, d.kind.as_str());
            }
            return Ok(());
        }
        DeviceAction::Revoke { name } => {
            store.revoke_device(&name)?;
            println!("device {name} revoked");
            ("device_revoke", name)
        }
    };
    crate::audit_cli(&audit, action_name, serde_json::json!({ "device": target }))
}
