//! Which refused requests get a row of their own in the audit trail.
//!
//! A refused request without a valid login (a bad token, a failed sign-in) costs a row and
//! an fsync; anyone can send thousands. Per source address and refusal code, the first few
//! of each minute are written in full and the rest are counted, then written as one summary
//! row when the minute is over: the trail still tells who was refused, how often and why, and a
//! flood cannot fill the disk. Accesses and changes by signed-in people are never
//! aggregated. Time is passed in, so the rule is tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refusals written in full per source, code and window.
pub const FULL_PER_WINDOW: u32 = 5;
/// The window of aggregation.
pub const WINDOW: Duration = Duration::from_secs(60);
/// (source, code) pairs remembered at most; past it, new sources share one entry (`None`).
const MAX_SOURCES: usize = 10_000;
/// Distinct account names kept per summary (the first ones tried), and their length.
pub const ACCOUNTS_PER_SUMMARY: usize = 5;
const ACCOUNT_MAX_BYTES: usize = 64;

/// Whether a refusal gets its own row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Written in full.
    Write,
    /// Counted into the summary row of its source and code.
    Counted,
}

/// Refusals of one source with one code in one window that were counted, not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The source's network (`None`: sources past the remembered number).
    pub source: Option<IpAddr>,
    /// The refusal's code (`token_missing`, `login_failed`, ...).
    pub code: String,
    /// Refusals counted, not written.
    pub counted: u64,
    /// The first few distinct account names of the counted refusals (sign-ins), cut to 64
    /// bytes: whose account was tried matters as much as how often.
    pub accounts: Vec<String>,
    /// When the window began.
    pub since: Instant,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    counted: u64,
    accounts: Vec<String>,
}

type Key = (Option<IpAddr>, String);

/// Refusals by source address and code in the current window.
#[derive(Debug, Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<Key, Window>>,
}

impl RefusalLog {
    /// Notes a refusal with `code` (one of the API's stable codes) from `source` at `now`,
    /// for `account` (the name tried, or empty): whether to write it, and the summary of its
    /// key's previous window when that window just ended. IPv6 sources count per /64.
    pub fn note(
        &self,
        source: Option<IpAddr>,
        account: &str,
        code: &str,
        now: Instant,
    ) -> (Verdict, Option<Summary>) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (source.map(crate::login_rate::network), code.to_owned());
        if windows.len() >= MAX_SOURCES && !windows.contains_key(&key) {
            key.0 = None;
        }
        let fresh = || Window {
            started: now,
            written: 0,
            counted: 0,
            accounts: Vec::new(),
        };
        let w = windows.entry(key.clone()).or_insert_with(fresh);
        let mut ended = None;
        if now.saturating_duration_since(w.started) >= WINDOW {
            ended = summary(key, std::mem::replace(w, fresh()));
        }
        if w.written < FULL_PER_WINDOW {
            w.written += 1;
            (Verdict::Write, ended)
        } else {
            w.counted += 1;
            if !account.is_empty() && w.accounts.len() < ACCOUNTS_PER_SUMMARY {
                let name = cut(account, ACCOUNT_MAX_BYTES);
                if !w.accounts.iter().any(|a| a == name) {
                    w.accounts.push(name.to_owned());
                }
            }
            (Verdict::Counted, ended)
        }
    }

    /// Takes the summaries of windows that ended by `now` (keys quiet since are forgotten).
    pub fn take_ended(&self, now: Instant) -> Vec<Summary> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<Key> = windows
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.started) >= WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| windows.remove(&k).and_then(|w| summary(k, w)))
            .collect()
    }

    /// Takes the summaries of every window, ended or not (at shutdown: counted refusals
    /// are not lost with the process).
    pub fn take_all(&self) -> Vec<Summary> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.drain().filter_map(|(k, w)| summary(k, w)).collect()
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn summary((source, code): Key, w: Window) -> Option<Summary> {
    (w.counted > 0).then_some(Summary {
        source,
        code,
        counted: w.counted,
        accounts: w.accounts,
        since: w.started,
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // an arbitrary origin for the virtual clock
mod tests {
    use super::*;

    #[test]
    fn a_few_refusals_a_minute_in_full_then_one_summary() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let written = (0..1000)
            .filter(|_| log.note(a, "", "token_missing", t0).0 == Verdict::Write)
            .count();
        assert_eq!(written, FULL_PER_WINDOW as usize);
        // Another code, and another source, have their own allowance.
        assert_eq!(log.note(a, "", "login_failed", t0).0, Verdict::Write);
        assert_eq!(log.note(b, "", "token_missing", t0).0, Verdict::Write);
        assert!(log.take_ended(t0 + Duration::from_secs(59)).is_empty());
        // The next refusal after the window carries the summary of the last one.
        let (v, s) = log.note(a, "", "token_missing", t0 + WINDOW);
        assert_eq!(v, Verdict::Write);
        let s = s.expect("summary");
        assert_eq!(
            (s.source, s.code.as_str(), s.counted),
            (a, "token_missing", 995)
        );
        // A source that went quiet is summed up by the sweep, and forgotten.
        for _ in 0..10 {
            log.note(b, "", "token_missing", t0 + Duration::from_secs(1));
        }
        let ended = log.take_ended(t0 + Duration::from_secs(61));
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!((ended[0].source, ended[0].counted), (b, 6));
        assert!(log.take_ended(t0 + Duration::from_secs(200)).is_empty());
    }

    #[test]
    fn a_summary_names_the_accounts_tried_and_shutdown_flushes_it() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let long = "x".repeat(1000);
        let names = ["dr-ana", "dr-ana", "dr-bo", &long, "c", "d", "e", "f"];
        for _ in 0..FULL_PER_WINDOW {
            log.note(a, "root", "login_failed", t0);
        }
        for n in names {
            assert_eq!(log.note(a, n, "login_failed", t0).0, Verdict::Counted);
        }
        // An IPv6 source counts per /64.
        let v6 = |last: u16| {
            Some(IpAddr::from(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 1, 0, 0, 0, last,
            )))
        };
        for i in 0..(FULL_PER_WINDOW as u16 + 3) {
            log.note(v6(i), "", "token_missing", t0);
        }
        // Nothing has ended, but at shutdown everything counted is summed up.
        assert!(log.take_ended(t0 + Duration::from_secs(1)).is_empty());
        let mut all = log.take_all();
        all.sort_by(|x, y| x.code.cmp(&y.code));
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].counted, names.len() as u64);
        assert_eq!(
            all[0].accounts,
            ["dr-ana", "dr-bo", &"x".repeat(64), "c", "d"],
            "the first {ACCOUNTS_PER_SUMMARY} distinct names, cut"
        );
        assert_eq!((all[1].source, all[1].counted), (v6(0), 3));
        assert!(log.take_all().is_empty());
    }

    #[test]
    fn the_remembered_sources_are_bounded() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 500) {
            log.note(Some(IpAddr::from(i.to_be_bytes())), "", "token_missing", t0);
        }
        assert_eq!(log.windows.lock().unwrap().len(), MAX_SOURCES + 1);
        // The sources past the bound share one allowance.
        let ended = log.take_ended(t0 + WINDOW);
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].source, ended[0].counted), (None, 500 - 5));
    }
}
