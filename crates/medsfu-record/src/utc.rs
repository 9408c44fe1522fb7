//! UTC calendar times for the names and headers of recorded files.

/// (year, month, day, hour, minute, second) in UTC of `secs` seconds since 1970.
pub fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `YYYYMMDDTHHMMSSZ`: file names that sort by time.
pub fn file_stamp(secs: i64) -> String {
    let (y, m, d, h, mi, s) = civil(secs);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// RFC 3339 in UTC to the microsecond, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, of `us`
/// microseconds since 1970: for tables other programs read.
pub fn rfc3339_us(us: i64) -> String {
    let (y, m, d, h, mi, s) = civil(us.div_euclid(1_000_000));
    let frac = us.rem_euclid(1_000_000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:06}Z")
}

/// `YYYY-MM-DD HH:MM:SS UTC`: for people.
pub fn readable(secs: i64) -> String {
    let (y, m, d, h, mi, s) = civil(secs);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(readable(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(readable(1_795_564_800), "2026-11-25 00:00:00 UTC");
        assert_eq!(file_stamp(951_825_599), "20000229T115959Z");
        assert_eq!(readable(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(
            rfc3339_us(1_795_564_800_000_042),
            "2026-11-25T00:00:00.000042Z"
        );
        assert_eq!(rfc3339_us(-1), "1969-12-31T23:59:59.999999Z");
    }
}
