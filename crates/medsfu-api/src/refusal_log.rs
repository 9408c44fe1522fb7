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
    /// The source (`None`: sources past the remembered number).
    pub source: Option<IpAddr>,
    /// The refusal's code (`token_missing`, `login_failed`, ...).
    pub code: String,
    /// Refusals counted, not written.
    pub counted: u64,
    /// When the window began.
    pub since: Instant,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    counted: u64,
}

type Key = (Option<IpAddr>, String);

/// Refusals by source address and code in the current window.
#[derive(Debug, Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<Key, Window>>,
}

impl RefusalLog {
    /// Notes a refusal with `code` (one of the API's stable codes) from `source` at `now`:
    /// whether to write it, and the summary of its key's previous window when that window
    /// just ended.
    pub fn note(
        &self,
        source: Option<IpAddr>,
        code: &str,
        now: Instant,
    ) -> (Verdict, Option<Summary>) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (source, code.to_owned());
        if windows.len() >= MAX_SOURCES && !windows.contains_key(&key) {
            key.0 = None;
        }
        let fresh = || Window {
            started: now,
            written: 0,
            counted: 0,
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
}

fn summary((source, code): Key, w: Window) -> Option<Summary> {
    (w.counted > 0).then_some(Summary {
        source,
        code,
        counted: w.counted,
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
            .filter(|_| log.note(a, "token_missing", t0).0 == Verdict::Write)
            .count();
        assert_eq!(written, FULL_PER_WINDOW as usize);
        // Another code, and another source, have their own allowance.
        assert_eq!(log.note(a, "login_failed", t0).0, Verdict::Write);
        assert_eq!(log.note(b, "token_missing", t0).0, Verdict::Write);
        assert!(log.take_ended(t0 + Duration::from_secs(59)).is_empty());
        // The next refusal after the window carries the summary of the last one.
        let (v, s) = log.note(a, "token_missing", t0 + WINDOW);
        assert_eq!(v, Verdict::Write);
        let s = s.expect("summary");
        assert_eq!(
            (s.source, s.code.as_str(), s.counted),
            (a, "token_missing", 995)
        );
        // A source that went quiet is summed up by the sweep, and forgotten.
        for _ in 0..10 {
            log.note(b, "token_missing", t0 + Duration::from_secs(1));
        }
        let ended = log.take_ended(t0 + Duration::from_secs(61));
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!((ended[0].source, ended[0].counted), (b, 6));
        assert!(log.take_ended(t0 + Duration::from_secs(200)).is_empty());
    }

    #[test]
    fn the_remembered_sources_are_bounded() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 500) {
            log.note(Some(IpAddr::from(i.to_be_bytes())), "token_missing", t0);
        }
        assert_eq!(log.windows.lock().unwrap().len(), MAX_SOURCES + 1);
        // The sources past the bound share one allowance.
        let ended = log.take_ended(t0 + WINDOW);
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].source, ended[0].counted), (None, 500 - 5));
    }
}
