//! ECG snapshot as a one-page PDF: header, standard ECG paper grid, one row per lead.
//!
//! The PDF (version 1.4) is written by hand: five objects, an uncompressed content stream
//! and the built-in Helvetica font, so no PDF library and no font file are needed. The
//! scale is the paper standard, 25 mm/s and 10 mm/mV, so the printout can be measured with
//! an ECG ruler.

use std::ops::RangeInclusive;

/// PDF points per millimetre.
const MM: f64 = 72.0 / 25.4;
/// A4 landscape, in points.
const PAGE_W: f64 = 842.0;
/// A4 landscape, in points.
const PAGE_H: f64 = 595.0;
/// Paper speed.
const MM_PER_S: f64 = 25.0;
/// Gain.
const MM_PER_MV: f64 = 10.0;
/// Durations that fit the page at 25 mm/s: 11 s plus the lead-in is 290 mm of 297 mm.
const SECONDS: RangeInclusive<f64> = 1.0..=11.0;
/// Most leads drawn: with more, rows become too low to read.
pub const MAX_LEADS: usize = 16;
/// Most header lines: more would leave too little height for the rows.
pub const MAX_HEADER_LINES: usize = 8;
/// Characters of the title kept: longer titles would run off the page.
const TITLE_CHARS: usize = 80;
/// Characters of a header line kept.
const LINE_CHARS: usize = 120;
/// Characters of a lead name kept: the name sits in the lead-in column.
const NAME_CHARS: usize = 12;
/// Left margin when the grid is narrow enough to leave room; wide grids are centred.
const LEFT_MM: f64 = 12.0;
/// Margin above the header.
const TOP_MM: f64 = 8.0;
/// Margin below the grid.
const BOTTOM_MM: f64 = 6.0;
/// Space between the header and the grid, enough for the top row's calibration pulse,
/// which may rise above the grid when rows are low.
const GAP_MM: f64 = 7.0;
/// Grid before the trace in each row: the lead name, then the calibration pulse, side by
/// side so that neither runs into the other or into a neighbouring row's.
const LEAD_IN_MM: f64 = 15.0;
/// Rows are never higher than this, so few leads do not become giant.
const MAX_ROW_MM: f64 = 40.0;
/// Width of one decimation column: two points (lowest and highest) per 0.1 mm are finer
/// than any printer or screen shows.
const COLUMN_MM: f64 = 0.1;
/// Title font size.
const TITLE_PT: f64 = 12.0;
/// Header line and lead name font size.
const TEXT_PT: f64 = 8.0;
/// Distance between header lines.
const LEADING_PT: f64 = 10.0;
/// Scale note printed under the header lines.
const SCALE_NOTE: &str = "25 mm/s, 10 mm/mV";

/// One lead's trace: its name and its samples in millivolts at `sample_rate_hz`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadTrace {
    /// Lead name as printed, e.g. "II" or "V1".
    pub name: String,
    /// Samples per second of `mv`.
    pub sample_rate_hz: f64,
    /// Samples in millivolts from the start of the snapshot; non-finite samples are gaps.
    pub mv: Vec<f32>,
}

/// The document's header lines (intervention, vehicle, time span, who asked).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// First line, in larger type.
    pub title: String,
    /// Further lines, one per line of text.
    pub lines: Vec<String>,
}

/// Why an ECG snapshot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EcgPdfError {
    /// There is nothing to draw.
    #[error("no leads to draw")]
    NoLeads,
    /// More leads than rows that can be read on one page.
    #[error("{0} leads: at most {MAX_LEADS} fit the page")]
    TooManyLeads(usize),
    /// A lead without samples.
    #[error("lead {0:?} has no samples")]
    EmptyLead(String),
    /// A sample rate that is zero, negative or not finite.
    #[error("lead {name:?}: sample rate {rate} Hz is not a positive number")]
    SampleRate {
        /// The lead's name.
        name: String,
        /// The rate given.
        rate: f64,
    },
    /// The duration does not fit the page at 25 mm/s (or is not a number).
    #[error("{0} s: the snapshot lasts 1 to 11 s")]
    Seconds(f64),
    /// More header lines than fit above the grid.
    #[error("{0} header lines: at most {MAX_HEADER_LINES}")]
    TooManyHeaderLines(usize),
}

/// The PDF of an ECG snapshot: `seconds` (1 to 11) of every lead, one row each, top to
/// bottom in the order given, on one A4 landscape page at 25 mm/s and 10 mm/mV.
///
/// Samples past `seconds` are not drawn; a shorter lead ends early.
pub fn ecg_pdf(header: &Header, leads: &[LeadTrace], seconds: f64) -> Result<Vec<u8>, EcgPdfError> {
    if leads.is_empty() {
        return Err(EcgPdfError::NoLeads);
    }
    if leads.len() > MAX_LEADS {
        return Err(EcgPdfError::TooManyLeads(leads.len()));
    }
    for lead in leads {
        if lead.mv.is_empty() {
            return Err(EcgPdfError::EmptyLead(lead.name.clone()));
        }
        if !(lead.sample_rate_hz.is_finite() && lead.sample_rate_hz > 0.0) {
            return Err(EcgPdfError::SampleRate {
                name: lead.name.clone(),
                rate: lead.sample_rate_hz,
            });
        }
    }
    // A NaN is in no range, so it is refused here too.
    if !SECONDS.contains(&seconds) {
        return Err(EcgPdfError::Seconds(seconds));
    }
    if header.lines.len() > MAX_HEADER_LINES {
        return Err(EcgPdfError::TooManyHeaderLines(header.lines.len()));
    }

    let mut c = Content::default();

    // Header, left-aligned with the grid.
    let grid_w_mm = ((LEAD_IN_MM + seconds * MM_PER_S) / 5.0).ceil() * 5.0;
    let x0 = ((PAGE_W - grid_w_mm * MM) / 2.0).min(LEFT_MM * MM);
    let mut y = PAGE_H - TOP_MM * MM - TITLE_PT;
    c.text(x0, y, TITLE_PT, &pdf_string(&header.title, TITLE_CHARS));
    y -= TITLE_PT + 2.0;
    for line in header.lines.iter().map(|l| pdf_string(l, LINE_CHARS)) {
        c.text(x0, y, TEXT_PT, &line);
        y -= LEADING_PT;
    }
    c.text(x0, y, TEXT_PT, SCALE_NOTE);

    // The grid in whole millimetres, the rows sharing it equally. With many leads (12 leads
    // under 3 header lines: 14 mm) large complexes cross into the neighbouring rows, as on
    // paper printouts. The outer rows may also leave the grid, into the gap under the header
    // and the bottom margin; only there, short of the text and the page's edge, is a trace
    // cut (which also keeps wild samples' coordinates small).
    let top = y - 3.0 - GAP_MM * MM;
    let available_mm = (top / MM) - BOTTOM_MM;
    let grid_h_mm = available_mm.floor().min(MAX_ROW_MM * leads.len() as f64);
    let row_mm = grid_h_mm / leads.len() as f64;
    let (y_min, y_max) = (BOTTOM_MM / 2.0 * MM, top + GAP_MM * MM);
    grid(&mut c, x0, top, grid_w_mm, grid_h_mm);

    let trace_x0 = x0 + LEAD_IN_MM * MM;
    c.push("q 0 G 0 g 0.6 w 1 J 1 j\n");
    for (i, lead) in leads.iter().enumerate() {
        let base = top - (i as f64 + 0.5) * row_mm * MM;
        let name = pdf_string(&lead.name, NAME_CHARS);

        // Left of the calibration pulse, just above the baseline: no trace or pulse of any
        // row reaches there (names over 7 characters run into the pulse).
        c.text(x0 + 0.7 * MM, base + MM, TEXT_PT, &name);

        // The standard 1 mV pulse: 10 mm high, 0.2 s (5 mm) wide, at the lead-in's end.
        c.push(&format!("% calibration {name}\n"));
        let pulse = [
            (7.5, 0.0),
            (8.5, 0.0),
            (8.5, 10.0),
            (13.5, 10.0),
            (13.5, 0.0),
            (15.0, 0.0),
        ];
        for (k, (dx, dy)) in pulse.into_iter().enumerate() {
            c.point(x0 + dx * MM, base + dy * MM, k == 0);
        }
        c.push("S\n");

        c.push(&format!("% lead {name}\n"));
        let rate = lead.sample_rate_hz;
        // Samples at t = 0 ..= seconds; the float-to-int cast saturates for huge rates.
        let n = lead
            .mv
            .len()
            .min(((seconds * rate).floor() as usize).saturating_add(1));
        let samples_per_column = rate * COLUMN_MM / MM_PER_S;
        for run in decimate(&lead.mv[..n], samples_per_column) {
            for (k, (idx, mv)) in run.into_iter().enumerate() {
                let x = trace_x0 + idx as f64 / rate * MM_PER_S * MM;
                let y = (base + f64::from(mv) * MM_PER_MV * MM).clamp(y_min, y_max);
                c.point(x, y, k == 0);
            }
        }
        c.push("S\n");
    }
    c.push("Q\n");

    Ok(assemble(c.0.as_bytes()))
}

/// A content stream being written.
#[derive(Default)]
struct Content(String);

impl Content {
    fn push(&mut self, s: &str) {
        self.0.push_str(s);
    }

    /// A path point: `m` starts a subpath, `l` continues it.
    fn point(&mut self, x: f64, y: f64, first: bool) {
        let op = if first { "m" } else { "l" };
        self.push(&format!("{} {} {op}\n", num(x), num(y)));
    }

    /// Black Helvetica text at (`x`, `y`); `s` is already escaped by [`pdf_string`].
    fn text(&mut self, x: f64, y: f64, size: f64, s: &str) {
        self.push(&format!(
            "BT 0 g /F1 {} Tf 1 0 0 1 {} {} Tm ({s}) Tj ET\n",
            num(size),
            num(x),
            num(y)
        ));
    }
}

/// The ECG paper: thin lines every millimetre, thick ones every 5 mm and a thick border,
/// from the top-left corner at (`x0`, `top`).
fn grid(c: &mut Content, x0: f64, top: f64, w_mm: f64, h_mm: f64) {
    let (right, bottom) = (x0 + w_mm * MM, top - h_mm * MM);
    // Both are whole millimetres by construction.
    let (w, h) = (w_mm.round() as u32, h_mm.round() as u32);
    c.push("% grid\nq\n");
    for (width, colour, thick) in [("0.25", "1 0.8 0.8", false), ("0.6", "1 0.5 0.5", true)] {
        c.push(&format!("{width} w {colour} RG\n"));
        for i in (0..=w).filter(|i| (i % 5 == 0) == thick) {
            let x = x0 + f64::from(i) * MM;
            c.push(&format!(
                "{x} {t} m {x} {b} l\n",
                x = num(x),
                t = num(top),
                b = num(bottom)
            ));
        }
        for j in (0..=h).filter(|j| (j % 5 == 0) == thick) {
            let y = top - f64::from(j) * MM;
            c.push(&format!(
                "{l} {y} m {r} {y} l\n",
                l = num(x0),
                r = num(right),
                y = num(y)
            ));
        }
        c.push("S\n");
    }
    // The row count may leave the bottom edge off a 5 mm line; the border closes it.
    c.push(&format!(
        "{} {} {} {} re S\nQ\n",
        num(x0),
        num(bottom),
        num(w_mm * MM),
        num(h_mm * MM)
    ));
}

/// A sample's index and value.
type Sample = (usize, f32);

/// The samples drawn, as runs of (index, value): in each column of `samples_per_column`
/// samples the lowest and the highest, in time order, so that QRS peaks survive however
/// many samples share a column. A non-finite sample ends a run: the trace has a gap.
fn decimate(mv: &[f32], samples_per_column: f64) -> Vec<Vec<Sample>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    // Column number, lowest and highest sample of the column being gathered.
    let mut col: Option<(u64, Sample, Sample)> = None;
    let flush = |col: &mut Option<(u64, Sample, Sample)>, run: &mut Vec<Sample>| {
        if let Some((_, lo, hi)) = col.take() {
            let (a, b) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
            run.push(a);
            if b.0 != a.0 {
                run.push(b);
            }
        }
    };
    for (i, &v) in mv.iter().enumerate() {
        if !v.is_finite() {
            flush(&mut col, &mut run);
            if !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
            continue;
        }
        let c = (i as f64 / samples_per_column) as u64;
        match &mut col {
            Some((n, lo, hi)) if *n == c => {
                if v < lo.1 {
                    *lo = (i, v);
                }
                if v > hi.1 {
                    *hi = (i, v);
                }
            }
            _ => {
                flush(&mut col, &mut run);
                col = Some((c, (i, v), (i, v)));
            }
        }
    }
    flush(&mut col, &mut run);
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// `s` as the inside of a PDF literal string, cut to `max` characters: `(`, `)` and `\`
/// escaped; anything but printable ASCII becomes `?`, as the font's encoding has only
/// ASCII in common with Unicode text and control characters would break the layout.
fn pdf_string(s: &str, max: usize) -> String {
    let mut out = String::new();
    for ch in s.chars().take(max) {
        match ch {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            ' '..='~' => out.push(ch),
            _ => out.push('?'),
        }
    }
    out
}

/// `v` with at most two decimals and no trailing zeros, e.g. `12.5`, `-0.07`, `3`.
fn num(v: f64) -> String {
    // The cast saturates; every coordinate is on the page, far from the limits.
    let cents = (v * 100.0).round() as i64;
    let sign = if cents < 0 { "-" } else { "" };
    let a = cents.unsigned_abs();
    let (int, frac) = (a / 100, a % 100);
    if frac == 0 {
        format!("{sign}{int}")
    } else if frac % 10 == 0 {
        format!("{sign}{int}.{}", frac / 10)
    } else {
        format!("{sign}{int}.{frac:02}")
    }
}

/// The whole file around `content`: catalog, pages, page, content stream and font, then
/// the cross-reference table whose byte offsets readers use to find the objects.
fn assemble(content: &[u8]) -> Vec<u8> {
    let mut stream = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
    stream.extend_from_slice(content);
    // The end-of-line before `endstream` is not part of the stream's /Length.
    stream.extend_from_slice(b"\nendstream");
    let objects: [Vec<u8>; 5] = [
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {} {}] \
             /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
            num(PAGE_W),
            num(PAGE_H)
        )
        .into_bytes(),
        stream,
        // WinAnsiEncoding maps ASCII as typed (StandardEncoding would curl ' and `).
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
    ];

    // The comment of four bytes above 127 tells transfer tools the file is binary.
    let mut pdf = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        pdf.extend_from_slice(body);
        pdf.extend_from_slice(b"\nendobj\n");
    }
    let xref = pdf.len();
    // Every entry is exactly 20 bytes, its end-of-line two characters (CR LF).
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f\r\n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        pdf.extend_from_slice(format!("{off:010} 00000 n\r\n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::f64::consts::PI;
    use std::path::Path;
    use std::process::Command;

    /// Runs a poppler-utils tool; fails the test, saying what to install, when it is missing.
    fn poppler(cmd: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
        let out = match Command::new(cmd).args(args).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{cmd} not found: install poppler-utils (apt-get install -y poppler-utils) \
                 to check the ECG PDF"
            ),
            Err(e) => panic!("cannot run {cmd}: {e}"),
        };
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).rposition(|w| w == needle)
    }

    /// The decimal number at the start of `b`, and its length.
    fn leading_number(b: &[u8]) -> (usize, usize) {
        let len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        (
            std::str::from_utf8(&b[..len]).unwrap().parse().unwrap(),
            len,
        )
    }

    /// The content stream, found through its object's /Length.
    fn content(pdf: &[u8]) -> String {
        let at = find(pdf, b"/Length ").unwrap() + 8;
        let (len, _) = leading_number(&pdf[at..]);
        let data = find(&pdf[at..], b"stream\n").unwrap() + at + 7;
        String::from_utf8(pdf[data..data + len].to_vec()).unwrap()
    }

    /// The subpaths of the path following the comment line `% {marker}`, up to its `S`.
    fn path(content: &str, marker: &str) -> Vec<Vec<(f64, f64)>> {
        let start = content
            .find(&format!("% {marker}\n"))
            .unwrap_or_else(|| panic!("no {marker:?} in the content"));
        let mut subpaths: Vec<Vec<(f64, f64)>> = Vec::new();
        for line in content[start..].lines().skip(1) {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["S"] => return subpaths,
                [x, y, op] => {
                    let p = (x.parse().unwrap(), y.parse().unwrap());
                    match *op {
                        "m" => subpaths.push(vec![p]),
                        "l" => subpaths.last_mut().unwrap().push(p),
                        _ => panic!("unexpected {line:?} in {marker:?}"),
                    }
                }
                _ => panic!("unexpected {line:?} in {marker:?}"),
            }
        }
        panic!("{marker:?} not stroked")
    }

    fn header() -> Header {
        Header {
            title: "Intervention 2025-0612 (test) \\ ECG snapshot".into(),
            lines: vec![
                "Vehicle: RTW 3/83-1, monitor corpuls3".into(),
                "10:42:05 - 10:42:15 UTC".into(),
                "Requested by Dr. Müller".into(),
            ],
        }
    }

    /// Sample times of the test spikes: every 0.8 s from 0.425 s. Multiples of 25 ms fall on
    /// samples at 360 Hz and 8 kHz, so the peak is a sample; 0.425 s is a quarter into a
    /// 0.1 mm column (4 ms), so the peak is not a column's first sample, as it would be
    /// for 0.4 s, and keeping every k-th sample misses it.
    fn spike_times(seconds: f64) -> Vec<f64> {
        (0..)
            .map(|k: i32| 0.425 + 0.8 * f64::from(k))
            .take_while(|&t| t < seconds)
            .collect()
    }

    /// 1 mV sine at 1.2 Hz plus a 1.5 mV triangular spike (3 ms either side) every 0.8 s.
    fn sine_and_spikes(rate: f64, seconds: f64) -> Vec<f32> {
        let spikes = spike_times(seconds);
        (0..=(rate * seconds) as usize)
            .map(|i| {
                let t = i as f64 / rate;
                let spike: f64 = spikes
                    .iter()
                    .map(|&s| 1.5 * (1.0 - (t - s).abs() / 0.003).max(0.0))
                    .sum();
                ((2.0 * PI * 1.2 * t).sin() + spike) as f32
            })
            .collect()
    }

    /// A plausible ECG complex every 0.8 s (75 bpm): P, Q, R, S and T as Gaussians,
    /// scaled per lead (negative for aVR).
    fn ecg(rate: f64, seconds: f64, gain: f64) -> Vec<f32> {
        let waves = [
            (-0.2, 0.025, 0.15),
            (-0.03, 0.008, -0.12),
            (0.0, 0.01, 1.2),
            (0.03, 0.01, -0.25),
            (0.25, 0.05, 0.3),
        ];
        (0..=(rate * seconds) as usize)
            .map(|i| {
                let t = i as f64 / rate;
                let phase = (t - 0.3).rem_euclid(0.8);
                let v: f64 = waves
                    .iter()
                    .map(|&(at, w, a)| {
                        let d = (phase - at).rem_euclid(0.8);
                        let d = d.min(0.8 - d);
                        a * (-(d * d) / (2.0 * w * w)).exp()
                    })
                    .sum();
                (v * gain) as f32
            })
            .collect()
    }

    fn twelve_leads() -> Vec<LeadTrace> {
        let names = [
            ("I", 0.6),
            ("II", 1.0),
            ("III", 0.4),
            ("aVR", -0.8),
            ("aVL", 0.3),
            ("aVF", 0.7),
            ("V1", -0.5),
            ("V2", 0.9),
            ("V3", 1.3),
            ("V4", 1.5),
            ("V5", 1.2),
            ("V6", 0.9),
        ];
        names
            .iter()
            .map(|&(name, gain)| LeadTrace {
                name: name.into(),
                sample_rate_hz: 500.0,
                mv: ecg(500.0, 10.0, gain),
            })
            .collect()
    }

    fn two_leads(rate: f64) -> Vec<LeadTrace> {
        let mv = sine_and_spikes(rate, 10.0);
        vec![
            LeadTrace {
                name: "II".into(),
                sample_rate_hz: rate,
                mv: mv.clone(),
            },
            LeadTrace {
                name: "V2 inverted".into(),
                sample_rate_hz: rate,
                mv: mv.iter().map(|v| -v).collect(),
            },
        ]
    }

    #[test]
    fn xref_offsets_stream_length_and_trailer_are_consistent() {
        let pdf = ecg_pdf(&header(), &twelve_leads(), 10.0).unwrap();
        assert!(pdf.starts_with(b"%PDF-1.4\n%"));
        assert!(pdf[10..14].iter().all(|&b| b >= 128), "binary comment line");
        assert!(pdf.ends_with(b"\n%%EOF\n"));

        let sx = rfind(&pdf, b"startxref\n").unwrap() + 10;
        let (xref, _) = leading_number(&pdf[sx..]);
        assert!(
            pdf[xref..].starts_with(b"xref\n0 "),
            "startxref points at xref"
        );
        let (first, _) = leading_number(&pdf[xref + 5..]);
        assert_eq!(first, 0);
        let (size, len) = leading_number(&pdf[xref + 7..]);
        let table = xref + 7 + len + 1;
        assert_eq!(pdf[table - 1], b'\n');
        let entries: Vec<&[u8]> = pdf[table..table + 20 * size].chunks(20).collect();
        assert_eq!(entries[0], b"0000000000 65535 f\r\n");
        for (n, e) in entries.iter().enumerate().skip(1) {
            assert_eq!(&e[10..], b" 00000 n\r\n", "entry {n}: {e:?}");
            let (off, digits) = leading_number(e);
            assert_eq!(digits, 10);
            // Preceded by an end-of-line, so that "11 0 obj" cannot pass for "1 0 obj".
            assert_eq!(pdf[off - 1], b'\n', "object {n} starts a line");
            let head = format!("{n} 0 obj\n");
            assert!(
                pdf[off..].starts_with(head.as_bytes()),
                "xref entry {n} points at {:?}",
                String::from_utf8_lossy(&pdf[off..off + 12])
            );
        }
        assert!(pdf[table + 20 * size..].starts_with(b"trailer\n"));
        let trailer = format!("<< /Size {size} /Root 1 0 R >>");
        assert!(find(&pdf, trailer.as_bytes()).is_some());
        let objs = pdf.windows(7).filter(|w| w.ends_with(b" 0 obj\n")).count();
        assert_eq!(objs, size - 1, "every object is in the table");
        let (root, _) = leading_number(entries[1]);
        assert!(pdf[root..].starts_with(b"1 0 obj\n<< /Type /Catalog"));

        // /Length is the byte count up to the end-of-line before endstream.
        let at = find(&pdf, b"/Length ").unwrap() + 8;
        let (length, _) = leading_number(&pdf[at..]);
        let data = find(&pdf[at..], b">>\nstream\n").unwrap() + at + 10;
        assert!(
            pdf[data + length..].starts_with(b"\nendstream\nendobj\n"),
            "stream of {length} bytes ends at endstream"
        );
        assert_eq!(rfind(&pdf, b"\nendstream").unwrap(), data + length);

        // Numbers have at most two decimals.
        let c = content(&pdf);
        for line in c
            .lines()
            .filter(|l| !l.starts_with('%') && !l.starts_with("BT"))
        {
            for tok in line.split(' ') {
                if let Some((_, frac)) = tok.split_once('.') {
                    assert!(frac.len() <= 2 && tok.parse::<f64>().is_ok(), "{tok:?}");
                }
            }
        }
        assert!(c.is_ascii());
    }

    #[test]
    fn poppler_renders_it_and_reads_the_header_and_lead_names() {
        let dir = TempDir::new("ecg-render");
        let file = dir.join("ecg.pdf");
        let pdf = ecg_pdf(&header(), &twelve_leads(), 10.0).unwrap();
        std::fs::write(&file, &pdf).unwrap();

        let prefix = dir.join("page");
        let (ok, _, err) = poppler(
            "pdftoppm",
            &["-png", "-r", "50", "-singlefile", s(&file), s(&prefix)],
        );
        assert!(ok && err.is_empty(), "pdftoppm: {err}");
        let png = std::fs::read(dir.join("page.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        // 842 x 595 pt at 50 dpi is 584.7 x 413.2 pixels, rounded up.
        assert_eq!((width, height), (585, 414), "A4 landscape at 50 dpi");

        // An uncompressed rendering to look at the pixels: pink paper, black trace.
        let (ok, ppm, err) = poppler("pdftoppm", &["-r", "50", "-singlefile", s(&file)]);
        assert!(ok && err.is_empty(), "pdftoppm: {err}");
        assert!(ppm.starts_with(b"P6\n585 414\n255\n"));
        let px: Vec<&[u8]> = ppm[15..].chunks(3).collect();
        assert_eq!(px.len(), 585 * 414);
        let pink = px
            .iter()
            .filter(|p| {
                let [r, g, b] = [p[0], p[1], p[2]].map(i32::from);
                r > 200 && (80..235).contains(&g) && b < 235 && r - g > 15
            })
            .count();
        eprintln!("pink {pink} of {} pixels", px.len());
        assert!(pink > px.len() / 5, "the grid covers much of the page");
        // Each lead is drawn across its row: in the band of pixel rows around its baseline,
        // nearly every pixel column of the trace has a dark pixel (the grid's are pink).
        // White and both grid colours have full red; black lowers it, if only partly: a
        // 0.6 pt line is under a pixel wide at 50 dpi, so anti-aliased.
        let dark = |x: usize, y: usize| px[y * 585 + x][0] < 235;
        let to_px = 50.0 / 72.0;
        let c = content(&pdf);
        for lead in twelve_leads() {
            let p = path(&c, &format!("lead {}", lead.name)).concat();
            let base = ((PAGE_H - p[0].1) * to_px) as usize;
            let (x0, x1) = (
                (p_min_x(&p) * to_px) as usize,
                (p_max_x(&p) * to_px) as usize,
            );
            let band = base - 6..base + 6;
            let inked = (x0..=x1)
                .filter(|&x| band.clone().any(|y| dark(x, y)))
                .count();
            eprintln!("{}: {inked} of {} columns inked", lead.name, x1 - x0 + 1);
            assert!(inked * 100 > (x1 - x0 + 1) * 85, "lead {} drawn", lead.name);
        }

        let (ok, text, err) = poppler("pdftotext", &["-layout", s(&file), "-"]);
        assert!(ok && err.is_empty(), "pdftotext: {err}");
        let text = String::from_utf8(text).unwrap();
        eprintln!("{text}");
        assert!(
            text.contains("Intervention 2025-0612 (test) \\ ECG snapshot"),
            "title with its escaped characters"
        );
        assert!(text.contains("Requested by Dr. M?ller"));
        assert!(text.contains("25 mm/s, 10 mm/mV"));
        let words: Vec<&str> = text.split_whitespace().collect();
        for lead in twelve_leads() {
            assert!(words.contains(&lead.name.as_str()), "lead {}", lead.name);
        }
    }

    #[test]
    fn saves_a_screenshot_for_people() {
        let dir = TempDir::new("ecg-screenshot");
        let file = dir.join("ecg.pdf");
        std::fs::write(&file, ecg_pdf(&header(), &twelve_leads(), 10.0).unwrap()).unwrap();
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let prefix = shots.join("ecg-snapshot");
        let (ok, _, err) = poppler(
            "pdftoppm",
            &["-png", "-r", "60", "-singlefile", s(&file), s(&prefix)],
        );
        assert!(ok && err.is_empty(), "pdftoppm: {err}");
        let png = std::fs::read(shots.join("ecg-snapshot.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 702);
    }

    /// The checks of `decimated_paths_keep_every_spike` at one sample rate.
    fn check_spikes(rate: f64) {
        let leads = two_leads(rate);
        let c = content(&ecg_pdf(&header(), &leads, 10.0).unwrap());
        let mut baselines = Vec::new();
        for (lead, sign) in [(&leads[0], 1.0), (&leads[1], -1.0)] {
            let sub = path(&c, &format!("lead {}", lead.name));
            assert_eq!(sub.len(), 1, "one unbroken trace");
            let p = &sub[0];
            assert!(p.len() <= 2 * 2500 + 2, "{} points", p.len());
            if rate > 1000.0 {
                assert!(p.len() < lead.mv.len() / 4, "decimated: {} points", p.len());
            }
            // Both signals are 0 at t = 0: the first point is on the baseline.
            let (x0, base) = p[0];
            baselines.push(base);
            let x_end = p.last().unwrap().0;
            assert!(
                ((x_end - x0) / MM - 250.0).abs() < 0.05,
                "10 s are 250 mm: {} mm",
                (x_end - x0) / MM
            );
            assert!(p.windows(2).all(|w| w[1].0 >= w[0].0), "time goes right");

            let mm = |y: f64| sign * (y - base) / MM;
            for t in spike_times(10.0) {
                let want = 10.0 * f64::from(lead.mv[(t * rate).round() as usize]) * sign;
                let x = x0 + t * MM_PER_S * MM;
                let got = p
                    .iter()
                    .filter(|q| (q.0 - x).abs() < 0.01 * MM_PER_S * MM)
                    .map(|q| mm(q.1))
                    .fold(f64::MIN, f64::max);
                assert!(
                    (got - want).abs() < 0.5,
                    "{rate} Hz, {}: spike at {t} s drawn {got:.2} mm high, sample {want:.2} mm",
                    lead.name
                );
                // The spike stands 1.5 mV = 15 mm over the sine it rides on.
                let sine = 10.0 * (2.0 * PI * 1.2 * t).sin();
                assert!(
                    (got - sine - 15.0).abs() < 0.5,
                    "spike height {}",
                    got - sine
                );
            }
            let max = p.iter().map(|q| mm(q.1)).fold(f64::MIN, f64::max);
            let want = lead
                .mv
                .iter()
                .map(|&v| 10.0 * sign * f64::from(v))
                .fold(f64::MIN, f64::max);
            assert!(
                (max - want).abs() < 0.5,
                "max {max:.2} mm, want {want:.2} mm"
            );
            let min = p.iter().map(|q| mm(q.1)).fold(f64::MAX, f64::min);
            assert!((min + 10.0).abs() < 0.5, "sine trough -1 mV: {min:.2} mm");
        }
        // Two leads: rows of the full 40 mm, the first on top.
        assert!(((baselines[0] - baselines[1]) / MM - 40.0).abs() < 0.01);
    }

    #[test]
    fn decimated_paths_keep_every_spike() {
        check_spikes(360.0);
        // 32 samples per 0.1 mm column: keeping every k-th sample would miss the peaks.
        check_spikes(8000.0);
    }

    #[test]
    fn calibration_pulse_is_1_mv_high_and_0_2_s_wide() {
        let c = content(&ecg_pdf(&header(), &two_leads(360.0), 10.0).unwrap());
        let p = &path(&c, "calibration II")[0];
        let trace = &path(&c, "lead II")[0];
        let ys: Vec<f64> = p.iter().map(|q| q.1).collect();
        let height = (ys.iter().fold(f64::MIN, |a, &b| a.max(b)) - ys[0]) / MM;
        assert!((height - 10.0).abs() < 0.01, "{height} mm");
        let top: Vec<f64> = p.iter().filter(|q| q.1 > ys[0]).map(|q| q.0).collect();
        assert!(((top[1] - top[0]) / MM - 5.0).abs() < 0.01);
        assert_eq!(p.last().unwrap().1, trace[0].1, "on the trace's baseline");
        assert!(p.last().unwrap().0 <= trace[0].0, "before the trace");
    }

    #[test]
    fn grid_has_thin_lines_every_mm_and_thick_every_5_mm() {
        let c = content(&ecg_pdf(&header(), &two_leads(360.0), 10.0).unwrap());
        let grid = &c[c.find("% grid\n").unwrap()..c.find("% calibration").unwrap()];
        let parts: Vec<&str> = grid.split(" RG\n").collect();
        assert!(parts[0].ends_with("0.25 w 1 0.8 0.8"));
        assert!(parts[1].ends_with("0.6 w 1 0.5 0.5"));
        let verticals = |s: &str| -> Vec<f64> {
            s.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    (f.len() == 6 && f[0] == f[3]).then(|| f[0].parse().unwrap())
                })
                .collect()
        };
        let thin = verticals(parts[1]);
        let thick = verticals(parts[2]);
        // 15 mm lead-in plus 250 mm: 266 lines, 54 of them thick.
        assert_eq!((thin.len(), thick.len()), (212, 54));
        assert!(thick
            .windows(2)
            .all(|w| ((w[1] - w[0]) / MM - 5.0).abs() < 0.01));
        let mut all = [thin, thick.clone()].concat();
        all.sort_by(f64::total_cmp);
        assert!(all
            .windows(2)
            .all(|w| ((w[1] - w[0]) / MM - 1.0).abs() < 0.01));
        let trace = &path(&c, "lead II")[0];
        assert!(thick[0] <= p_min_x(trace) && p_max_x(trace) <= thick[53] + 0.01);
        assert!(thick[53] <= PAGE_W - 5.0 * MM, "inside the page's margin");
    }

    fn p_min_x(p: &[(f64, f64)]) -> f64 {
        p.iter().map(|q| q.0).fold(f64::MAX, f64::min)
    }

    fn p_max_x(p: &[(f64, f64)]) -> f64 {
        p.iter().map(|q| q.0).fold(f64::MIN, f64::max)
    }

    #[test]
    fn twelve_leads_share_the_page_in_equal_rows() {
        let leads = twelve_leads();
        let c = content(&ecg_pdf(&header(), &leads, 10.0).unwrap());
        // Every synthetic lead is near 0 at t = 0 (between T and P): the baseline.
        let bases: Vec<f64> = leads
            .iter()
            .map(|l| path(&c, &format!("lead {}", l.name))[0][0].1)
            .collect();
        let rows: Vec<f64> = bases.windows(2).map(|w| (w[0] - w[1]) / MM).collect();
        eprintln!("rows {rows:?} mm");
        assert!(
            rows.iter().all(|&r| (r - rows[0]).abs() < 0.02),
            "equal rows"
        );
        assert!((10.0..=15.0).contains(&rows[0]), "{} mm", rows[0]);
        assert!(
            bases[11] - rows[0] / 2.0 * MM >= BOTTOM_MM * MM - 0.01,
            "on the page"
        );
        // 11 s still fit the width.
        let wide = content(&ecg_pdf(&header(), &leads, 11.0).unwrap());
        for l in &leads {
            for (x, y) in path(&wide, &format!("lead {}", l.name)).concat() {
                assert!((0.0..=PAGE_W).contains(&x) && (0.0..=PAGE_H).contains(&y));
            }
        }
    }

    #[test]
    fn traces_stop_at_seconds_or_at_their_end() {
        let lead = |secs: f64| LeadTrace {
            name: "II".into(),
            sample_rate_hz: 500.0,
            mv: ecg(500.0, secs, 1.0),
        };
        for (samples, seconds, mm) in [(20.0, 5.0, 125.0), (3.0, 10.0, 75.0), (1.0, 1.0, 25.0)] {
            let c = content(&ecg_pdf(&header(), &[lead(samples)], seconds).unwrap());
            let p = path(&c, "lead II").concat();
            let width = (p_max_x(&p) - p_min_x(&p)) / MM;
            assert!(
                (width - mm).abs() < 0.05,
                "{samples} s in {seconds} s: {width} mm"
            );
        }
    }

    #[test]
    fn gaps_and_wild_samples_stay_on_the_page() {
        let mut mv = ecg(500.0, 4.0, 1.0);
        mv[1000] = f32::NAN;
        mv[1500] = f32::INFINITY;
        mv[300] = 1e30;
        mv[301] = -1e30;
        let leads = [LeadTrace {
            name: "II".into(),
            sample_rate_hz: 500.0,
            mv,
        }];
        let c = content(&ecg_pdf(&Header::default(), &leads, 4.0).unwrap());
        assert!(!c.contains("NaN") && !c.contains("inf"));
        let sub = path(&c, "lead II");
        assert_eq!(sub.len(), 3, "two gaps");
        // Cut short of the scale note, the header's last line, and of the page's bottom.
        let note = c.lines().find(|l| l.contains("(25 mm/s")).unwrap();
        let note_y: f64 = note.split(" ").nth(11).unwrap().parse().unwrap();
        let ys: Vec<f64> = sub.concat().iter().map(|q| q.1).collect();
        let (lo, hi) = (
            ys.iter().copied().fold(f64::MAX, f64::min),
            ys.iter().copied().fold(f64::MIN, f64::max),
        );
        assert!(
            hi < note_y && hi > note_y - 5.0 * MM,
            "top {hi}, note at {note_y}"
        );
        assert!(lo > 0.0 && lo < 5.0 * MM, "bottom {lo}");
    }

    #[test]
    fn text_is_escaped_and_non_ascii_becomes_a_question_mark() {
        assert_eq!(pdf_string("a(b)c\\d", 99), "a\\(b\\)c\\\\d");
        assert_eq!(pdf_string("Müller\tÅ😀", 99), "M?ller???");
        assert_eq!(pdf_string("abcdef", 3), "abc");
        let h = Header {
            title: "(x) é".into(),
            lines: vec!["line)\n(".into()],
        };
        let leads = [LeadTrace {
            name: "a\\b".into(),
            sample_rate_hz: 100.0,
            mv: vec![0.0; 200],
        }];
        let c = content(&ecg_pdf(&h, &leads, 2.0).unwrap());
        assert!(c.contains("(\\(x\\) ?) Tj"));
        assert!(c.contains("(line\\)?\\() Tj"));
        assert!(c.contains("(a\\\\b) Tj"));
    }

    #[test]
    fn numbers_are_short_and_rounded() {
        assert_eq!(num(12.5), "12.5");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(-0.07), "-0.07");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(2.345_6), "2.35");
        assert_eq!(num(841.999), "842");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let ok = |rate: f64, mv: Vec<f32>| LeadTrace {
            name: "II".into(),
            sample_rate_hz: rate,
            mv,
        };
        let h = header();
        assert!(matches!(ecg_pdf(&h, &[], 10.0), Err(EcgPdfError::NoLeads)));
        assert!(matches!(
            ecg_pdf(&h, &[ok(500.0, vec![])], 10.0),
            Err(EcgPdfError::EmptyLead(n)) if n == "II"
        ));
        for rate in [0.0, -500.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                ecg_pdf(&h, &[ok(rate, vec![0.0])], 10.0),
                Err(EcgPdfError::SampleRate { .. })
            ));
        }
        for seconds in [0.0, 0.99, 11.01, 60.0, f64::NAN, -1.0] {
            assert!(
                matches!(
                    ecg_pdf(&h, &[ok(500.0, vec![0.0])], seconds),
                    Err(EcgPdfError::Seconds(_))
                ),
                "{seconds}"
            );
        }
        for seconds in [1.0, 2.5, 11.0] {
            assert!(ecg_pdf(&h, &[ok(500.0, vec![0.0, 0.1])], seconds).is_ok());
        }
        let many = vec![ok(500.0, vec![0.0]); MAX_LEADS + 1];
        assert!(matches!(
            ecg_pdf(&h, &many, 10.0),
            Err(EcgPdfError::TooManyLeads(17))
        ));
        assert!(ecg_pdf(&h, &many[1..], 10.0).is_ok());
        let long = Header {
            title: "t".into(),
            lines: vec!["l".into(); MAX_HEADER_LINES + 1],
        };
        assert!(matches!(
            ecg_pdf(&long, &many[1..], 10.0),
            Err(EcgPdfError::TooManyHeaderLines(9))
        ));
    }

    #[test]
    fn decimation_keeps_lows_and_highs_in_time_order() {
        // Two columns of four samples each.
        let runs = decimate(&[0.0, 3.0, -2.0, 1.0, 5.0, 5.0, -1.0, 0.0], 4.0);
        assert_eq!(runs, [vec![(1, 3.0), (2, -2.0), (4, 5.0), (6, -1.0)]]);
        // One sample per column: all kept.
        assert_eq!(decimate(&[1.0, 2.0], 0.5), [vec![(0, 1.0), (1, 2.0)]]);
        let gap = decimate(&[1.0, f32::NAN, 2.0, 3.0], 1.0);
        assert_eq!(gap, [vec![(0, 1.0)], vec![(2, 2.0), (3, 3.0)]]);
        assert!(decimate(&[f32::NAN], 1.0).is_empty());
    }
}
