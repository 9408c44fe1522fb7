//! How many sign-in attempts one address may make: a token bucket per source address.
//!
//! Sign-ins are the one unauthenticated request that costs the server real work (a password
//! check) and a row in the audit trail; one address may not spend more than its allowance
//! of either. Time is passed in, so the rule is tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The network a source address stands for: an IPv4 address itself, an IPv6 address its
/// /64 (one subscriber's prefix: rotating through it must not buy fresh allowances).
pub fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

/// Addresses remembered at most; past it, those with a full allowance are forgotten first.
const MAX_SOURCES: usize = 10_000;

/// Sign-in allowances by source address.
#[derive(Debug)]
pub struct LoginRate {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl LoginRate {
    /// `per_minute` attempts per address, as a burst or spread out; 0 allows any number.
    pub fn new(per_minute: u32) -> LoginRate {
        LoginRate {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt of `source`'s allowance at `now`; when there is none left, how long
    /// until there is.
    pub fn take(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let source = network(source);
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec).min(capacity)
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            buckets.retain(|_, b| refill(b) < capacity);
            if buckets.len() >= MAX_SOURCES {
                // Every address is mid-flood: the new one waits like them.
                return Err(Duration::from_secs_f64(1.0 / per_sec));
            }
        }
        let b = buckets.entry(source).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let tokens = refill(b);
        if tokens >= 1.0 {
            *b = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *b = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / per_sec))
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // an arbitrary origin for the virtual clock
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_every_interval_per_address() {
        let t0 = Instant::now();
        let rate = LoginRate::new(30);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        for _ in 0..30 {
            assert_eq!(rate.take(a, t0), Ok(()));
        }
        let wait = rate.take(a, t0).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_secs(2), "30 a minute: one every 2 s");
        assert_eq!(rate.take(b, t0), Ok(()), "another address has its own");
        assert!(rate.take(a, t0 + Duration::from_millis(1900)).is_err());
        assert_eq!(rate.take(a, t0 + Duration::from_millis(2100)), Ok(()));
        assert!(rate.take(a, t0 + Duration::from_millis(2200)).is_err());
        // A minute later the whole burst is back.
        let later = t0 + Duration::from_secs(70);
        for _ in 0..30 {
            assert_eq!(rate.take(a, later), Ok(()));
        }
        assert!(rate.take(a, later).is_err());
    }

    #[test]
    fn an_ipv6_prefix_shares_one_allowance() {
        let t0 = Instant::now();
        let rate = LoginRate::new(3);
        // Rotating through one /64 does not buy a fresh allowance.
        for i in 0..3u16 {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, 0, 0, 1);
            assert_eq!(rate.take(ip.into(), t0), Ok(()));
        }
        let rotated = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xffff, 9, 9, 9);
        assert!(rate.take(rotated.into(), t0).is_err());
        // The neighbouring /64 is someone else.
        let other = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1);
        assert_eq!(rate.take(other.into(), t0), Ok(()));
        // An IPv4 address written as IPv6 is the IPv4 address.
        let v4: IpAddr = [192, 0, 2, 7].into();
        let mapped: IpAddr = std::net::Ipv4Addr::new(192, 0, 2, 7)
            .to_ipv6_mapped()
            .into();
        assert_eq!(network(mapped), v4);
        assert_eq!(network(v4), v4);
    }

    #[test]
    fn zero_is_no_limit_and_the_table_stays_bounded() {
        let t0 = Instant::now();
        let off = LoginRate::new(0);
        for _ in 0..1000 {
            assert_eq!(off.take([192, 0, 2, 1].into(), t0), Ok(()));
        }
        let rate = LoginRate::new(2);
        for i in 0..(MAX_SOURCES as u32 + 500) {
            let ip: IpAddr = std::net::Ipv4Addr::from(0x0a00_0000 + i).into();
            let _ = rate.take(ip, t0 + Duration::from_secs(u64::from(i / 100)));
        }
        let len = rate.buckets.lock().map(|b| b.len()).unwrap_or(usize::MAX);
        assert!(len <= MAX_SOURCES, "{len} addresses remembered");
    }
}
