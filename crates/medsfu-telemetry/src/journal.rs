//! The durable telemetry journal: append-only segment files of CRC-checked records.
//!
//! A frame is acknowledged only after [`Journal::sync`] has made it durable; callers append
//! a batch, sync once (group commit), then acknowledge the batch. Each `(source, sequence)`
//! is stored once: a resent frame is recognised and not stored again, while a different
//! frame under a number already used (a sender whose counter went back) is refused, so
//! it can neither replace what is stored nor vanish as a "duplicate". On opening, a torn
//! or corrupt tail of the newest segment is cut back to the last valid record.
//!
//! Segments grow in zero-filled steps written ahead of the records ([`PREALLOCATE`]): an
//! fdatasync after overwriting blocks that already exist need not commit the file
//! system's metadata, which is what makes an fsync occasionally take tens of
//! milliseconds. A zero length never starts a valid record, so the zeros end a scan and
//! are not mistaken for damage.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::frame::{Frame, FrameError};

/// Record header: body length and CRC-32 of the body, both big-endian.
const RECORD_HEADER: usize = 8;

/// The largest record: a frame's header (well under 1 KiB) and largest body.
const MAX_RECORD: usize = RECORD_HEADER + 1024 + crate::frame::MAX_BODY;

/// Where a history read continues: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    segment: usize,
    offset: u64,
}

/// Bytes of zeros written ahead of the records at a time.
pub const PREALLOCATE: u64 = 1 << 20;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file operation failed (disk full, unwritable directory...).
    #[error("journal {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A segment other than the newest is damaged: data would be lost by cutting it.
    #[error("journal segment {path} is damaged at byte {offset}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where its first bad record starts.
        offset: u64,
    },
    /// The bytes to append are not a frame.
    #[error("not a telemetry frame: {0}")]
    Frame(#[from] FrameError),
    /// A different frame is already stored under this `(source, sequence)`.
    #[error("source {source_id} sequence {sequence} is already stored with other content")]
    SequenceConflict {
        /// The source.
        source_id: u32,
        /// The sequence number used twice.
        sequence: u64,
    },
    /// The sequence is below the source's highest but was never stored: numbering went back.
    #[error(
        "source {source_id} sequence {sequence} is behind its highest stored sequence {highest}"
    )]
    SequenceBackwards {
        /// The source.
        source_id: u32,
        /// The sequence received.
        sequence: u64,
        /// The highest sequence stored.
        highest: u64,
    },
}

impl JournalError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            JournalError::Io { .. } => "journal_io",
            JournalError::Corrupt { .. } => "journal_corrupt",
            JournalError::Frame(e) => e.code(),
            JournalError::SequenceConflict { .. } => "sequence_conflict",
            JournalError::SequenceBackwards { .. } => "sequence_backwards",
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.to_owned();
    move |source| JournalError::Io { op, path, source }
}

/// What opening the journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records found.
    pub records: u64,
    /// Bytes cut from the newest segment's tail (a torn or corrupt last write).
    pub truncated_bytes: u64,
}

/// What [`Journal::append`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written (durable after the next [`Journal::sync`]).
    Stored,
    /// Already in the journal: not written again.
    Duplicate,
}

/// An append-only journal in one directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<PathBuf>,
    file: File,
    len: u64,
    /// Size of the current segment file: records up to `len`, zeros after.
    allocated: u64,
    sources: HashMap<u32, Source>,
    unsynced: usize,
}

/// What the journal remembers of one source: its highest sequence and the CRC-32 of every
/// stored frame, to tell a resend (same bytes) from a conflict (other bytes). A CRC
/// rather than the bytes keeps this at a few bytes per frame; two different frames with
/// one number pass as a resend only with probability 2^-32.
#[derive(Debug, Default)]
struct Source {
    highest: u64,
    crcs: HashMap<u64, u32>,
}

impl Source {
    fn note(&mut self, sequence: u64, crc: u32) {
        if self.crcs.is_empty() || sequence > self.highest {
            self.highest = sequence;
        }
        self.crcs.insert(sequence, crc);
    }
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.seg"))
}

/// Reads the valid records of a segment; returns them and the length of the valid prefix.
fn scan(bytes: &[u8]) -> (Vec<(usize, usize)>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= RECORD_HEADER {
        let len =
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_be_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + RECORD_HEADER;
        let Some(body) = bytes.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(body) != crc || Frame::decode(body).map(|(_, n)| n) != Ok(len) {
            break;
        }
        records.push((start, len));
        at = start + len;
    }
    (records, at)
}

/// The segment numbers in `dir`, in order.
fn segment_indices(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut indices: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    indices.sort_unstable();
    Ok(indices)
}

/// Every valid record of the journal in `dir`, oldest first, read without changing
/// anything (a journal in use by a running server may be read this way; a torn tail
/// being written simply ends the reading).
pub fn read_only(dir: &Path) -> Result<Vec<Vec<u8>>, JournalError> {
    let indices = segment_indices(dir)?;
    let mut out = Vec::new();
    for index in indices {
        let path = segment_path(dir, index);
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        let (records, _) = scan(&bytes);
        out.extend(
            records
                .iter()
                .map(|(start, n)| bytes[*start..start + n].to_vec()),
        );
    }
    Ok(out)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, recovering from a torn last write.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Journal, Recovery), JournalError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut indices = segment_indices(dir)?;
        if indices.is_empty() {
            indices.push(0);
        }
        let mut recovery = Recovery::default();
        let mut sources: HashMap<u32, Source> = HashMap::new();
        let last = indices.len() - 1;
        let mut segments = Vec::new();
        let mut len = 0;
        let mut allocated = 0;
        for (k, index) in indices.iter().enumerate() {
            let path = segment_path(dir, *index);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io("read", &path)(e)),
            };
            let (records, valid) = scan(&bytes);
            // Zeros after the records are preallocated space, not damage.
            let damaged = bytes[valid..].iter().any(|b| *b != 0);
            allocated = bytes.len() as u64;
            if damaged {
                if k != last {
                    return Err(JournalError::Corrupt {
                        path,
                        offset: valid as u64,
                    });
                }
                recovery.truncated_bytes = (bytes.len() - valid) as u64;
                allocated = valid as u64;
            }
            for (start, n) in &records {
                let body = &bytes[*start..start + n];
                if let Ok((f, _)) = Frame::decode(body) {
                    sources
                        .entry(f.source)
                        .or_default()
                        .note(f.sequence, crc32fast::hash(body));
                }
            }
            recovery.records += records.len() as u64;
            len = valid as u64;
            segments.push(path);
        }
        let current = segments[last].clone();
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&current)
            .map_err(io("open", &current))?;
        if recovery.truncated_bytes > 0 {
            file.set_len(len).map_err(io("truncate", &current))?;
            file.sync_all().map_err(io("sync", &current))?;
        }
        let mut j = Journal {
            dir: dir.to_owned(),
            segment_bytes: segment_bytes.max(1024),
            segments,
            file,
            len,
            allocated,
            sources,
            unsynced: 0,
        };
        j.seek_end()?;
        Ok((j, recovery))
    }

    fn seek_end(&mut self) -> Result<(), JournalError> {
        use std::io::Seek;
        let path = self.current().to_owned();
        self.file
            .seek(std::io::SeekFrom::Start(self.len))
            .map_err(io("seek", &path))?;
        Ok(())
    }

    fn current(&self) -> &Path {
        self.segments
            .last()
            .map_or(self.dir.as_path(), |p| p.as_path())
    }

    /// The highest sequence number stored for a source.
    pub fn highest(&self, source: u32) -> Option<u64> {
        self.sources.get(&source).map(|s| s.highest)
    }

    /// Every source with its highest stored sequence.
    pub fn sources(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.sources.iter().map(|(s, v)| (*s, v.highest))
    }

    /// Appends one encoded frame unless its `(source, sequence)` is already stored.
    pub fn append(&mut self, frame: &[u8]) -> Result<Appended, JournalError> {
        let (f, n) = Frame::decode(frame)?;
        if n != frame.len() {
            return Err(JournalError::Frame(FrameError::Malformed {
                kind: "record",
                reason: "bytes after the frame",
            }));
        }
        let crc = crc32fast::hash(frame);
        if let Some(src) = self.sources.get(&f.source) {
            if f.sequence <= src.highest {
                return match src.crcs.get(&f.sequence) {
                    Some(c) if *c == crc => Ok(Appended::Duplicate),
                    Some(_) => Err(JournalError::SequenceConflict {
                        source_id: f.source,
                        sequence: f.sequence,
                    }),
                    None => Err(JournalError::SequenceBackwards {
                        source_id: f.source,
                        sequence: f.sequence,
                        highest: src.highest,
                    }),
                };
            }
        }
        let need = (RECORD_HEADER + frame.len()) as u64;
        if self.len > 0 && self.len + need > self.segment_bytes {
            self.rotate()?;
        }
        if self.len + need > self.allocated {
            self.preallocate(self.len + need)?;
        }
        let mut rec = Vec::with_capacity(RECORD_HEADER + frame.len());
        rec.extend((frame.len() as u32).to_be_bytes());
        rec.extend(crc.to_be_bytes());
        rec.extend_from_slice(frame);
        let path = self.current().to_owned();
        if let Err(e) = self.file.write_all(&rec) {
            // Leave no half-written record behind: cut back to where this one began.
            let _ = self.file.set_len(self.len);
            self.allocated = self.len;
            let _ = self.seek_end();
            return Err(io("write", &path)(e));
        }
        self.len += need;
        self.unsynced += 1;
        self.sources
            .entry(f.source)
            .or_default()
            .note(f.sequence, crc);
        Ok(Appended::Stored)
    }

    /// Makes every appended record durable; returns how many this call covered.
    pub fn sync(&mut self) -> Result<usize, JournalError> {
        if self.unsynced == 0 {
            return Ok(0);
        }
        let path = self.current().to_owned();
        self.file.sync_data().map_err(io("sync", &path))?;
        Ok(std::mem::take(&mut self.unsynced))
    }

    /// Writes zeros ahead of the records until `upto` bytes of the segment exist, in
    /// [`PREALLOCATE`] steps, not past the segment size unless one record needs it.
    fn preallocate(&mut self, upto: u64) -> Result<(), JournalError> {
        use std::os::unix::fs::FileExt as _;
        let path = self.current().to_owned();
        let cap = self.segment_bytes.max(upto);
        let target = (self.allocated + PREALLOCATE).max(upto).min(cap);
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            self.file
                .write_all_at(&ZEROS[..n], at)
                .map_err(io("preallocate", &path))?;
            at += n as u64;
        }
        self.allocated = target;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        // The finished segment keeps its records only, without preallocated zeros.
        let path = self.current().to_owned();
        self.file.set_len(self.len).map_err(io("trim", &path))?;
        self.file.sync_all().map_err(io("sync", &path))?;
        let next = self.segments.len() as u64;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("create", &path))?;
        // The new file's name must be durable too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.file = file;
        self.len = 0;
        self.allocated = 0;
        self.segments.push(path);
        Ok(())
    }

    /// The stored frames from `at` on, oldest first, about `max_bytes` of them (at least
    /// one record's worth), and where the next read continues; none at the end. Reading
    /// history this way keeps the memory of a reader bounded however long the call.
    pub fn read_chunk(
        &self,
        mut at: Cursor,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, Cursor), JournalError> {
        let want = max_bytes.max(MAX_RECORD) as u64;
        while let Some(path) = self.segments.get(at.segment) {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(at.offset))?;
                    f.take(want).read_to_end(&mut bytes)
                })
                .map_err(io("read", path))?;
            let (records, used) = scan(&bytes);
            if !records.is_empty() {
                let frames = records
                    .into_iter()
                    .map(|(s, n)| bytes[s..s + n].to_vec())
                    .collect();
                at.offset += used as u64;
                return Ok((frames, at));
            }
            if at.segment + 1 == self.segments.len() {
                // The newest segment: later records are read by a later call.
                break;
            }
            at = Cursor {
                segment: at.segment + 1,
                offset: 0,
            };
        }
        Ok((Vec::new(), at))
    }

    /// Every stored frame, oldest first (for history replay).
    pub fn read_all(&self) -> Result<Vec<Vec<u8>>, JournalError> {
        let mut out = Vec::new();
        for path in &self.segments {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io("read", path))?;
            let (records, _) = scan(&bytes);
            out.extend(records.into_iter().map(|(s, n)| bytes[s..s + n].to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Body, VehicleStatus};

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("medsfu-journal-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn frame(source: u32, sequence: u64) -> Vec<u8> {
        Frame {
            source,
            sequence,
            captured_at_us: sequence as i64,
            body: Body::Chat {
                author: "crew".into(),
                text: format!("message {sequence}"),
            },
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn history_reads_in_bounded_chunks_across_segments_and_picks_up_new_records() {
        let d = Dir::new("chunks");
        // Small segments: the history spans several.
        let (mut j, _) = Journal::open(&d.0, 4096).unwrap();
        for s in 0..300 {
            j.append(&frame(1, s)).unwrap();
        }
        j.sync().unwrap();
        assert!(j.segments.len() > 3, "{} segments", j.segments.len());
        let all = j.read_all().unwrap();
        let mut read = Vec::new();
        let mut at = Cursor::default();
        let mut chunks = 0;
        loop {
            let (frames, next) = j.read_chunk(at, 1).unwrap();
            if frames.is_empty() {
                assert_eq!(next, at, "the end stays where it is");
                break;
            }
            let bytes: usize = frames.iter().map(Vec::len).sum();
            assert!(bytes <= MAX_RECORD, "a chunk of {bytes} bytes");
            read.extend(frames);
            at = next;
            chunks += 1;
        }
        assert_eq!(read, all);
        assert!(chunks > 3, "{chunks} chunks");
        // What is appended later is read from the same cursor on.
        j.append(&frame(1, 300)).unwrap();
        j.sync().unwrap();
        let (frames, _) = j.read_chunk(at, 1 << 20).unwrap();
        assert_eq!(frames, vec![frame(1, 300)]);
    }

    #[test]
    fn frames_survive_a_reopen_in_order_and_duplicates_are_not_stored_twice() {
        let d = Dir::new("reopen");
        let (mut j, r) = Journal::open(&d.0, 1 << 20).unwrap();
        assert_eq!(r, Recovery::default());
        for s in 0..100 {
            assert_eq!(j.append(&frame(1, s)).unwrap(), Appended::Stored);
        }
        assert_eq!(j.append(&frame(1, 42)).unwrap(), Appended::Duplicate);
        assert_eq!(j.sync().unwrap(), 100);
        drop(j);
        let (mut j, r) = Journal::open(&d.0, 1 << 20).unwrap();
        assert_eq!(r.records, 100);
        assert_eq!(j.highest(1), Some(99));
        assert_eq!(
            j.append(&frame(1, 99)).unwrap(),
            Appended::Duplicate,
            "after a resend"
        );
        assert_eq!(j.append(&frame(1, 100)).unwrap(), Appended::Stored);
        j.sync().unwrap();
        let all = j.read_all().unwrap();
        assert_eq!(all.len(), 101);
        for (i, b) in all.iter().enumerate() {
            assert_eq!(b, &frame(1, i as u64));
        }
    }

    #[test]
    fn a_number_reused_for_other_content_or_gone_back_is_refused_before_and_after_reopen() {
        let d = Dir::new("conflict");
        let (mut j, _) = Journal::open(&d.0, 1 << 20).unwrap();
        for s in [0, 1, 2, 5, 6] {
            assert_eq!(j.append(&frame(1, s)).unwrap(), Appended::Stored);
        }
        j.sync().unwrap();
        let other = |seq: u64| {
            Frame {
                source: 1,
                sequence: seq,
                captured_at_us: 0,
                body: Body::Chat {
                    author: "crew".into(),
                    text: "a counter that went back".into(),
                },
            }
            .encode()
            .unwrap()
        };
        for reopen in [false, true] {
            if reopen {
                drop(j);
                j = Journal::open(&d.0, 1 << 20).unwrap().0;
            }
            let e = j.append(&other(1)).unwrap_err();
            assert_eq!(e.code(), "sequence_conflict", "{e}");
            let e = j.append(&frame(1, 3)).unwrap_err();
            assert_eq!(e.code(), "sequence_backwards", "{e}");
            assert!(e.to_string().contains("highest stored sequence 6"), "{e}");
            assert_eq!(j.append(&frame(1, 6)).unwrap(), Appended::Duplicate);
            // Other sources are not affected.
            assert_eq!(
                j.append(&frame(2, if reopen { 1 } else { 0 })).unwrap(),
                Appended::Stored
            );
            j.sync().unwrap();
        }
        let all = j.read_all().unwrap();
        let expect: Vec<Vec<u8>> = [(1, 0), (1, 1), (1, 2), (1, 5), (1, 6), (2, 0), (2, 1)]
            .iter()
            .map(|(s, q)| frame(*s, *q))
            .collect();
        assert_eq!(all, expect, "nothing stored was replaced or added");
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_back_to_the_last_valid_record() {
        use std::os::unix::fs::FileExt as _;
        let d = Dir::new("torn");
        let (mut j, _) = Journal::open(&d.0, 1 << 20).unwrap();
        for s in 0..10 {
            j.append(&frame(3, s)).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        let seg = segment_path(&d.0, 0);
        let rec = |s| (RECORD_HEADER + frame(3, s).len()) as u64;
        let good_len: u64 = (0..10).map(rec).sum();
        // A torn write where the next record would go: half of a record.
        let half = &frame(3, 10)[..20];
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        let mut torn = (50u32).to_be_bytes().to_vec();
        torn.extend([0; 4]);
        torn.extend_from_slice(half);
        f.write_all_at(&torn, good_len).unwrap();
        let file_len = f.metadata().unwrap().len();
        drop(f);
        let (mut j, r) = Journal::open(&d.0, 1 << 20).unwrap();
        assert_eq!(r.records, 10);
        assert_eq!(r.truncated_bytes, file_len - good_len);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
        assert_eq!(j.append(&frame(3, 10)).unwrap(), Appended::Stored);
        j.sync().unwrap();
        drop(j);
        // A flipped bit in the last record: its CRC fails, it is cut.
        let mut bytes = std::fs::read(&seg).unwrap();
        let last_end = (good_len + rec(10)) as usize;
        bytes[last_end - 3] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();
        let (j, r) = Journal::open(&d.0, 1 << 20).unwrap();
        assert_eq!(r.records, 10);
        assert!(r.truncated_bytes > 0);
        assert_eq!(j.highest(3), Some(9));
    }

    #[test]
    fn preallocated_zeros_are_not_damage_and_appends_continue_after_the_records() {
        let d = Dir::new("prealloc");
        let (mut j, _) = Journal::open(&d.0, 4 << 20).unwrap();
        for s in 0..100 {
            j.append(&frame(1, s)).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        let seg = segment_path(&d.0, 0);
        let data: u64 = (0..100)
            .map(|s| (RECORD_HEADER + frame(1, s).len()) as u64)
            .sum();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), PREALLOCATE);
        let (mut j, r) = Journal::open(&d.0, 4 << 20).unwrap();
        assert_eq!(
            r,
            Recovery {
                records: 100,
                truncated_bytes: 0
            }
        );
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), PREALLOCATE);
        assert_eq!(j.append(&frame(1, 100)).unwrap(), Appended::Stored);
        j.sync().unwrap();
        let all = j.read_all().unwrap();
        assert_eq!(all.len(), 101);
        assert_eq!(all[100], frame(1, 100));
        assert!(data < PREALLOCATE);
    }

    #[test]
    fn segments_rotate_and_damage_before_the_newest_is_an_error() {
        let d = Dir::new("rotate");
        let (mut j, _) = Journal::open(&d.0, 2048).unwrap();
        for s in 0..200 {
            j.append(&frame(5, s)).unwrap();
        }
        j.sync().unwrap();
        assert!(j.segments.len() > 3, "{} segments", j.segments.len());
        assert_eq!(j.read_all().unwrap().len(), 200);
        drop(j);
        let (j, r) = Journal::open(&d.0, 2048).unwrap();
        assert_eq!(r.records, 200);
        drop(j);
        let first = segment_path(&d.0, 0);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let e = Journal::open(&d.0, 2048).unwrap_err();
        assert_eq!(e.code(), "journal_corrupt", "{e}");
    }

    #[test]
    fn an_unusable_directory_and_garbage_are_clear_errors() {
        let d = Dir::new("bad");
        std::fs::create_dir_all(&d.0).unwrap();
        let file = d.0.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = Journal::open(&file.join("journal"), 1 << 20).unwrap_err();
        assert_eq!(e.code(), "journal_io");
        assert!(e.to_string().contains("not-a-dir"), "{e}");
        let (mut j, _) = Journal::open(&d.0.join("ok"), 1 << 20).unwrap();
        assert!(j.append(b"garbage").is_err());
        let status = Frame {
            source: 1,
            sequence: 0,
            captured_at_us: 0,
            body: Body::Status(VehicleStatus::Departed),
        }
        .encode()
        .unwrap();
        let mut two = status.clone();
        two.extend_from_slice(&status);
        assert!(j.append(&two).is_err(), "exactly one frame per record");
    }
}
