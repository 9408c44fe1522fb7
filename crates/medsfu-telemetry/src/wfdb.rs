//! Reading PhysioNet WFDB records (a `.hea` header plus signal files in formats 212 and 16),
//! the ECG recordings the simulated ambulance plays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WfdbError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The header is not a WFDB header medsfu understands.
    #[error("header line {line}: {reason}")]
    Header {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A signal file is in a format other than 212 or 16.
    #[error("signal {0}: unsupported format {1}")]
    Format(String, u16),
    /// A signal file is shorter than the header says.
    #[error("{0} holds fewer samples than the header's {1}")]
    Short(String, usize),
    /// The samples do not add up to the header's checksum.
    #[error("signal {name}: checksum {actual} differs from the header's {expected}")]
    Checksum {
        /// Signal name.
        name: String,
        /// From the header.
        expected: i16,
        /// Computed.
        actual: i16,
    },
}

/// One signal (lead) of a record, as its header line describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// Signal file name, relative to the header.
    pub file: String,
    /// Storage format (212 or 16).
    pub format: u16,
    /// ADC units per millivolt.
    pub gain: f64,
    /// ADC value of 0 V.
    pub adc_zero: i32,
    /// Baseline (ADC units); the ADC zero when the header gives none.
    pub baseline: i32,
    /// First sample, for checking.
    pub initial: i32,
    /// 16-bit sum of all samples, for checking.
    pub checksum: i16,
    /// Lead name (e.g. `MLII`, `v1`).
    pub name: String,
}

/// A record: header fields and every signal's samples.
#[derive(Debug, Clone)]
pub struct Record {
    /// Record name.
    pub name: String,
    /// Samples per second per signal.
    pub sample_rate: f64,
    /// Samples per signal.
    pub samples_per_signal: usize,
    /// Signal descriptions, in header order.
    pub signals: Vec<Signal>,
    /// Samples (ADC units), one vector per signal.
    pub samples: Vec<Vec<i16>>,
}

impl Record {
    /// A sample in millivolts.
    pub fn millivolts(&self, signal: usize, index: usize) -> Option<f64> {
        let s = self.signals.get(signal)?;
        let v = *self.samples.get(signal)?.get(index)?;
        Some(f64::from(i32::from(v) - s.baseline) / s.gain)
    }
}

fn header_err(line: usize, reason: impl Into<String>) -> WfdbError {
    WfdbError::Header {
        line,
        reason: reason.into(),
    }
}

/// Parses a header's text.
pub fn parse_header(text: &str) -> Result<(String, f64, usize, Vec<Signal>), WfdbError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (n, record) = lines
        .next()
        .ok_or_else(|| header_err(1, "no record line"))?;
    let f: Vec<&str> = record.split_whitespace().collect();
    if f.len() < 2 {
        return Err(header_err(n, "record line needs a name and a signal count"));
    }
    let name = f[0].to_owned();
    let nsig: usize = f[1]
        .parse()
        .map_err(|_| header_err(n, "bad signal count"))?;
    // The frequency may carry "/counter" or "(base)" suffixes.
    let fs: f64 = f
        .get(2)
        .map(|s| s.split(['/', '(']).next().unwrap_or(s))
        .unwrap_or("250")
        .parse()
        .map_err(|_| header_err(n, "bad sampling frequency"))?;
    let nsamp: usize = f
        .get(3)
        .map_or(Ok(0), |s| s.parse())
        .map_err(|_| header_err(n, "bad sample count"))?;
    // Never trust the count for an allocation (fuzzing found a header asking for 8 TB):
    // each signal needs a line of the header, so it cannot have more than it has lines.
    let mut signals = Vec::with_capacity(nsig.min(text.lines().count()));
    for _ in 0..nsig {
        let (n, l) = lines
            .next()
            .ok_or_else(|| header_err(0, "fewer signal lines than signals"))?;
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 2 {
            return Err(header_err(n, "signal line needs a file and a format"));
        }
        let num = |i: usize, what: &str| -> Result<Option<f64>, WfdbError> {
            match f.get(i) {
                None => Ok(None),
                Some(s) => s
                    .split(['(', '/'])
                    .next()
                    .unwrap_or(s)
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| header_err(n, format!("bad {what}"))),
            }
        };
        let format = num(1, "format")?.unwrap_or(0.0) as u16;
        let gain = num(2, "gain")?.filter(|g| *g != 0.0).unwrap_or(200.0);
        let adc_zero = num(4, "ADC zero")?.unwrap_or(0.0) as i32;
        // A baseline in parentheses after the gain, else the ADC zero.
        // A gain written "200(1024)/mV" carries the baseline in parentheses.
        let baseline = f
            .get(2)
            .and_then(|g| g.split_once('('))
            .and_then(|(_, b)| b.split(')').next())
            .and_then(|b| b.parse::<i32>().ok())
            .unwrap_or(adc_zero);
        signals.push(Signal {
            file: f[0].to_owned(),
            format,
            gain,
            adc_zero,
            baseline,
            initial: num(5, "initial value")?.unwrap_or(0.0) as i32,
            checksum: num(6, "checksum")?.unwrap_or(0.0) as i32 as i16,
            name: f
                .get(8)
                .map_or_else(|| format!("sig{}", signals.len()), |s| (*s).to_owned()),
        });
    }
    Ok((name, fs, nsamp, signals))
}

fn twelve_bit(v: u16) -> i16 {
    // Sign-extend a 12-bit two's-complement value.
    ((v << 4) as i16) >> 4
}

/// Decodes `count` frames of `nsig` interleaved signals in `format`.
fn decode(
    data: &[u8],
    format: u16,
    nsig: usize,
    count: usize,
    file: &str,
) -> Result<Vec<Vec<i16>>, WfdbError> {
    // The header's counts are not trusted for allocations: no more samples than bytes.
    let mut out = vec![Vec::with_capacity(count.min(data.len())); nsig];
    let total = count.saturating_mul(nsig);
    match format {
        16 => {
            if data.len() < total.saturating_mul(2) {
                return Err(WfdbError::Short(file.to_owned(), count));
            }
            for (i, b) in data.chunks_exact(2).take(total).enumerate() {
                out[i % nsig].push(i16::from_le_bytes([b[0], b[1]]));
            }
        }
        212 => {
            if data.len() < total.div_ceil(2).saturating_mul(3) {
                return Err(WfdbError::Short(file.to_owned(), count));
            }
            let mut k = 0;
            for g in data.chunks_exact(3) {
                let first = u16::from(g[0]) | (u16::from(g[1] & 0x0F) << 8);
                let second = u16::from(g[2]) | (u16::from(g[1] & 0xF0) << 4);
                for v in [first, second] {
                    if k < total {
                        out[k % nsig].push(twelve_bit(v));
                        k += 1;
                    }
                }
                if k >= total {
                    break;
                }
            }
        }
        f => return Err(WfdbError::Format(file.to_owned(), f)),
    }
    Ok(out)
}

/// Reads record `name` from `dir` (its `.hea` and every signal file it names) and checks
/// each signal against the header's first value and checksum.
pub fn read_record(dir: &Path, name: &str) -> Result<Record, WfdbError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|source| WfdbError::Io { path, source })
    };
    let text = String::from_utf8_lossy(&read(&format!("{name}.hea"))?).into_owned();
    let (rec_name, fs, nsamp, signals) = parse_header(&text)?;
    // Signals sharing a file are interleaved in header order.
    let mut files: Vec<(String, u16, Vec<usize>)> = Vec::new();
    for (i, s) in signals.iter().enumerate() {
        match files.iter_mut().find(|(f, _, _)| *f == s.file) {
            Some((_, _, idx)) => idx.push(i),
            None => files.push((s.file.clone(), s.format, vec![i])),
        }
    }
    let mut samples: HashMap<usize, Vec<i16>> = HashMap::new();
    for (file, format, idx) in files {
        let data = read(&file)?;
        let count = if nsamp > 0 {
            nsamp
        } else {
            match format {
                16 => data.len() / 2 / idx.len(),
                _ => data.len() * 2 / 3 / idx.len(),
            }
        };
        for (k, v) in decode(&data, format, idx.len(), count, &file)?
            .into_iter()
            .enumerate()
        {
            samples.insert(idx[k], v);
        }
    }
    let samples: Vec<Vec<i16>> = (0..signals.len())
        .map(|i| samples.remove(&i).unwrap_or_default())
        .collect();
    for (s, v) in signals.iter().zip(&samples) {
        let actual = v.iter().fold(0i16, |a, x| a.wrapping_add(*x));
        if actual != s.checksum {
            return Err(WfdbError::Checksum {
                name: s.name.clone(),
                expected: s.checksum,
                actual,
            });
        }
    }
    let samples_per_signal = samples.first().map_or(0, Vec::len);
    Ok(Record {
        name: rec_name,
        sample_rate: fs,
        samples_per_signal,
        signals,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecg_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ecg")
    }

    #[test]
    fn mit_bih_100_matches_the_reference_values() {
        let r = read_record(&ecg_dir(), "100").expect("record 100");
        assert_eq!(r.sample_rate, 360.0);
        assert_eq!(r.samples_per_signal, 650_000);
        assert_eq!(r.signals[0].name, "MLII");
        assert_eq!(r.signals[1].name, "V5");
        assert_eq!(
            &r.samples[0][..10],
            &[995, 995, 995, 995, 995, 995, 995, 995, 1000, 997]
        );
        assert_eq!(
            &r.samples[1][..10],
            &[1011, 1011, 1011, 1011, 1011, 1011, 1011, 1011, 1008, 1008]
        );
        let minmax = |v: &[i16]| (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        assert_eq!(minmax(&r.samples[0]), (481, 1311));
        assert_eq!(minmax(&r.samples[1]), (531, 1269));
        assert!((r.millivolts(0, 0).unwrap() - -0.145).abs() < 1e-9);
    }

    #[test]
    fn ptb_s0010_has_twelve_leads_at_1000_hz() {
        let r = read_record(&ecg_dir(), "s0010_re").expect("record s0010_re");
        assert_eq!(r.sample_rate, 1000.0);
        assert_eq!(r.signals.len(), 15);
        assert_eq!(r.samples_per_signal, 38_400);
        assert_eq!(
            &r.samples[0][..10],
            &[-489, -485, -483, -482, -463, -452, -450, -469, -469, -447]
        );
        let mins: Vec<i16> = r.samples[..12]
            .iter()
            .map(|v| *v.iter().min().unwrap())
            .collect();
        assert_eq!(
            mins,
            vec![-1255, -1369, -1537, -931, -1034, -1404, -932, -1179, -1909, -1860, -1256, -801]
        );
        let maxs: Vec<i16> = r.samples[..12]
            .iter()
            .map(|v| *v.iter().max().unwrap())
            .collect();
        assert_eq!(
            maxs,
            vec![1291, 1101, 1169, 1052, 1211, 966, 2491, 2571, 3623, 2248, 734, 488]
        );
        assert_eq!(
            (r.samples[12][0], r.samples[13][0], r.samples[14][0]),
            (-3, 120, -18)
        );
    }

    #[test]
    fn corruption_is_detected_by_the_checksum() {
        let dir = std::env::temp_dir().join(format!("medsfu-wfdb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = ecg_dir();
        std::fs::copy(src.join("100.hea"), dir.join("100.hea")).unwrap();
        let mut dat = std::fs::read(src.join("100.dat")).unwrap();
        dat[1000] ^= 0x01;
        std::fs::write(dir.join("100.dat"), &dat).unwrap();
        let e = read_record(&dir, "100").unwrap_err();
        assert!(matches!(e, WfdbError::Checksum { .. }), "{e}");
        dat.truncate(3000);
        std::fs::write(dir.join("100.dat"), &dat).unwrap();
        assert!(matches!(
            read_record(&dir, "100").unwrap_err(),
            WfdbError::Short(..)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        for h in [
            "",
            "# only a comment",
            "rec",
            "rec x 360",
            "rec 2 360 10\nfile.dat",
            "rec 1 abc",
        ] {
            assert!(parse_header(h).is_err(), "{h:?}");
        }
    }

    #[test]
    fn a_header_claiming_billions_of_signals_is_an_error_not_an_allocation() {
        // Found by fuzzing (telemetry_frame): the count sized an 8 TB allocation.
        let text = "r 999999999999 250 99999999999\nr.dat 212 200 11 1024 0 0 0 MLII\n";
        assert!(parse_header(text).is_err());
    }
}
