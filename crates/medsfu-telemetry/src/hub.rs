//! The server's telemetry hub: one durable journal per room, acknowledgements only after
//! fsync, and a live feed for participants that starts with the room's whole history.
//!
//! Appends hold the room's lock from the write through the broadcast, and a new feed reads
//! the history and subscribes under the same lock, so a joiner sees every frame exactly
//! once: no gap and no duplicate at the seam between history and live frames.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::frame::{Frame, FrameError};
use crate::journal::{Appended, Cursor, Journal, JournalError};
use crate::json::to_json;

/// Frames buffered per room for live feeds before a slow feed re-reads the journal.
const LIVE_BUFFER: usize = 4096;

/// A stored frame: its bytes and its JSON view, shared by every feed.
#[derive(Debug)]
pub struct Item {
    /// Source of the frame.
    pub source: u32,
    /// Its sequence number.
    pub sequence: u64,
    /// The encoded frame.
    pub bytes: Vec<u8>,
    /// Its JSON view.
    pub json: Value,
}

impl Item {
    /// The item of an encoded frame (its JSON view computed once).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Item, FrameError> {
        Item::new(bytes)
    }

    fn new(bytes: Vec<u8>) -> Result<Item, FrameError> {
        let (f, _) = Frame::decode(&bytes)?;
        let json = to_json(&f, &bytes);
        Ok(Item {
            source: f.source,
            sequence: f.sequence,
            bytes,
            json,
        })
    }
}

/// Why the hub refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The room name cannot name a directory.
    #[error("room name not allowed for telemetry")]
    BadRoom,
    /// The journal failed (disk full, unwritable, damaged) or the frame is invalid.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A participant's source has no sequence number left.
    #[error("no sequence number left in this source")]
    SequenceExhausted,
    /// The thread reading history stopped (the server is stopping).
    #[error("the history reader stopped")]
    ReaderStopped,
}

impl HubError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::BadRoom => "bad_room",
            HubError::Journal(e) => e.code(),
            HubError::SequenceExhausted => "sequence_exhausted",
            HubError::ReaderStopped => "stopping",
        }
    }
}

/// What an append did: acknowledgements for what is durable, and why it stopped early.
#[derive(Debug, Default)]
pub struct AppendResult {
    /// `(source, highest durable sequence)` for each source in the batch.
    pub acks: Vec<(u32, u64)>,
    /// Frames newly stored.
    pub stored: usize,
    /// Frames already stored (a resend).
    pub duplicates: usize,
    /// The error that stopped the batch; frames before it are stored and acknowledged.
    pub error: Option<HubError>,
}

struct Room {
    journal: Option<Journal>,
    dir: PathBuf,
    live: broadcast::Sender<Arc<Item>>,
    /// The newest position by capture time stored since the server started.
    last_gps: Option<Arc<Item>>,
}

impl Room {
    fn journal(&mut self, segment_bytes: u64) -> Result<&mut Journal, JournalError> {
        if self.journal.is_none() {
            let (j, rec) = Journal::open(&self.dir, segment_bytes)?;
            if rec.truncated_bytes > 0 {
                tracing::warn!(
                    truncated_bytes = rec.truncated_bytes,
                    records = rec.records,
                    "telemetry journal had a torn tail; cut back to the last valid record"
                );
            }
            self.journal = Some(j);
        }
        // Set just above when it was missing.
        self.journal.as_mut().ok_or_else(|| JournalError::Io {
            op: "open",
            path: self.dir.clone(),
            source: std::io::Error::other("journal unavailable"),
        })
    }
}

/// Counters of the hub.
#[derive(Clone)]
struct HubStats {
    stored: IntCounter,
    duplicates: IntCounter,
    rejected: IntCounterVec,
    sync_seconds: Histogram,
}

/// The telemetry of every room, journaled under one directory.
pub struct Hub {
    dir: PathBuf,
    segment_bytes: u64,
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
    chat_lock: Mutex<()>,
    stats: HubStats,
}

/// Sources with this bit are the server's, numbering what participants write; devices
/// use the others.
pub const PARTICIPANT_SOURCES: u32 = 0x8000_0000;

/// The frame source of a participant's chat messages: derived from the identity, with the
/// top bit set so it never collides with a device's own (small) source numbers.
pub fn chat_source(identity: &str) -> u32 {
    crc32fast::hash(identity.as_bytes()) | PARTICIPANT_SOURCES
}

/// Why a device may not write a frame (its stable code), if it may not: the server alone
/// writes participants' sources and what participants say (chat, snapshot requests), so a
/// vehicle can neither speak for a person nor take their numbering.
pub fn device_refusal(frame: &Frame) -> Option<&'static str> {
    if frame.source & PARTICIPANT_SOURCES != 0 {
        return Some("reserved_source");
    }
    match frame.body {
        crate::frame::Body::Chat { .. } | crate::frame::Body::SnapshotRequest { .. } => {
            Some("participant_only")
        }
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub journaling under `dir` (one subdirectory per room); its metrics go to
    /// `registry`.
    pub fn new(dir: &Path, segment_bytes: u64, registry: &Registry) -> prometheus::Result<Hub> {
        let stats = HubStats {
            stored: IntCounter::new(
                "medsfu_telemetry_frames_stored_total",
                "Telemetry frames journaled durably",
            )?,
            duplicates: IntCounter::new(
                "medsfu_telemetry_frames_duplicate_total",
                "Telemetry frames received again after a resend and not stored twice",
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "medsfu_telemetry_frames_rejected_total",
                    "Telemetry frames refused, by reason",
                ),
                &["reason"],
            )?,
            sync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "medsfu_telemetry_journal_sync_seconds",
                    "Time to make a batch of frames durable (write and fsync)",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
                ]),
            )?,
        };
        registry.register(Box::new(stats.stored.clone()))?;
        registry.register(Box::new(stats.duplicates.clone()))?;
        registry.register(Box::new(stats.rejected.clone()))?;
        // The journal's reasons exported from the start, so that alerts see a zero; frame
        // decoding reasons appear when they first happen.
        for r in [
            "journal_io",
            "journal_corrupt",
            "sequence_conflict",
            "sequence_backwards",
            "reserved_source",
            "participant_only",
        ] {
            stats.rejected.with_label_values(&[r]);
        }
        registry.register(Box::new(stats.sync_seconds.clone()))?;
        Ok(Hub {
            dir: dir.to_owned(),
            segment_bytes,
            rooms: Mutex::new(HashMap::new()),
            chat_lock: Mutex::new(()),
            stats,
        })
    }

    /// Counts a frame refused before it reached the hub (e.g. a bad stream).
    pub fn count_rejected(&self, reason: &str) {
        self.stats.rejected.with_label_values(&[reason]).inc();
    }

    fn room(&self, room: &str) -> Result<Arc<Mutex<Room>>, HubError> {
        // Room names are validated upstream; a leading dot could still name "." or "..".
        if room.is_empty() || room.starts_with('.') || room.contains(['/', '\\']) {
            return Err(HubError::BadRoom);
        }
        let mut rooms = lock(&self.rooms);
        Ok(rooms
            .entry(room.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Room {
                    journal: None,
                    dir: self.dir.join(room),
                    live: broadcast::channel(LIVE_BUFFER).0,
                    last_gps: None,
                }))
            })
            .clone())
    }

    /// Journals a batch of encoded frames (blocking: call from a blocking thread), makes
    /// them durable with one fsync, then hands the new ones to live feeds.
    pub fn append(&self, room: &str, frames: Vec<Vec<u8>>) -> AppendResult {
        let mut res = AppendResult::default();
        let r = match self.room(room) {
            Ok(r) => r,
            Err(e) => {
                res.error = Some(e);
                return res;
            }
        };
        let mut r = lock(&r);
        let started = std::time::Instant::now();
        let mut fresh = Vec::new();
        let mut seen: HashMap<u32, u64> = HashMap::new();
        let outcome = (|| -> Result<(), HubError> {
            let j = r.journal(self.segment_bytes)?;
            for bytes in frames {
                let item = match Item::new(bytes) {
                    Ok(i) => i,
                    Err(e) => return Err(HubError::Journal(JournalError::Frame(e))),
                };
                match j.append(&item.bytes)? {
                    Appended::Stored => fresh.push(Arc::new(item)),
                    Appended::Duplicate => {
                        res.duplicates += 1;
                        // Acknowledge what is already durable so the sender can move on.
                        if let Some(h) = j.highest(item.source) {
                            seen.insert(item.source, h);
                        }
                    }
                }
            }
            Ok(())
        })();
        // Everything written so far is made durable, even if the batch stopped early.
        let synced = r.journal.as_mut().map(|j| j.sync().map_err(HubError::from));
        self.stats
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
        let failure = match (outcome, synced) {
            (Err(e), _) => Some(e),
            (Ok(()), Some(Err(e))) => Some(e),
            _ => None,
        };
        if let Some(e) = &failure {
            self.stats.rejected.with_label_values(&[e.code()]).inc();
            if matches!(e, HubError::Journal(JournalError::Io { .. })) {
                // State after a failed write or fsync is uncertain: reopen from disk,
                // which keeps exactly what is valid there, and acknowledge nothing new.
                r.journal = None;
                fresh.clear();
                seen.clear();
            }
        }
        for item in &fresh {
            seen.insert(item.source, item.sequence);
            if item.json["kind"] == "gps" {
                let at = |i: &Item| i.json["captured_at_us"].as_i64().unwrap_or(i64::MIN);
                if r.last_gps.as_deref().is_none_or(|l| at(item) >= at(l)) {
                    r.last_gps = Some(item.clone());
                }
            }
        }
        res.stored = fresh.len();
        self.stats.stored.inc_by(fresh.len() as u64);
        self.stats.duplicates.inc_by(res.duplicates as u64);
        for item in fresh {
            // No live feed is not an error.
            let _ = r.live.send(item);
        }
        let mut acks: Vec<(u32, u64)> = seen.into_iter().collect();
        acks.sort_unstable();
        res.acks = acks;
        res.error = failure;
        res
    }

    /// Journals a chat message from `author` (blocking), numbered in the author's own
    /// source, and hands it to live feeds.
    pub fn chat(
        &self,
        room: &str,
        author: &str,
        text: &str,
        captured_at_us: i64,
    ) -> Result<(), HubError> {
        let body = crate::frame::Body::Chat {
            author: author.to_owned(),
            text: text.to_owned(),
        };
        self.post(room, author, body, captured_at_us)
    }

    /// Journals a frame a participant wrote (chat, an ECG snapshot request; blocking),
    /// numbered in the participant's own source, and hands it to live feeds.
    pub fn post(
        &self,
        room: &str,
        author: &str,
        body: crate::frame::Body,
        captured_at_us: i64,
    ) -> Result<(), HubError> {
        let source = chat_source(author);
        let r = self.room(room)?;
        // Held across the numbering and the append so two sessions of one author cannot
        // take the same sequence number.
        let _numbering = lock(&self.chat_lock);
        let sequence = {
            let mut g = lock(&r);
            match g.journal(self.segment_bytes)?.highest(source) {
                None => 0,
                Some(h) => h.checked_add(1).ok_or(HubError::SequenceExhausted)?,
            }
        };
        let frame = Frame {
            source,
            sequence,
            captured_at_us,
            body,
        };
        let bytes = frame.encode().map_err(JournalError::from)?;
        match self.append(room, vec![bytes]).error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The directory the journals live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks (blocking) that the journal directory takes a durable write.
    pub fn probe_writable(&self) -> std::io::Result<()> {
        use std::io::Write as _;
        std::fs::create_dir_all(&self.dir)?;
        let probe = self.dir.join(".ready-probe");
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(b"ok")?;
        f.sync_all()?;
        std::fs::remove_file(&probe)
    }

    /// The room's latest position (its GPS frame's JSON view), if one arrived since the
    /// server started; never opens a journal.
    pub fn last_position(&self, room: &str) -> Option<Arc<Item>> {
        let r = lock(&self.rooms).get(room)?.clone();
        let g = lock(&r).last_gps.clone();
        g
    }

    /// The highest durable sequence of `source` in `room`.
    pub fn highest(&self, room: &str, source: u32) -> Result<Option<u64>, HubError> {
        let r = self.room(room)?;
        let mut r = lock(&r);
        Ok(r.journal(self.segment_bytes)?.highest(source))
    }

    /// A feed of the room's telemetry: everything stored so far ([`Feed::history_chunk`]),
    /// then live frames ([`Feed::next`]) (blocking: opens the journal).
    pub fn feed(&self, room: &str) -> Result<Feed, HubError> {
        let r = self.room(room)?;
        let live = {
            let mut g = lock(&r);
            // Opened (and recovered) now, so that reading history finds it ready.
            g.journal(self.segment_bytes)?;
            g.live.subscribe()
        };
        Ok(Feed {
            room: r,
            live,
            last: HashMap::new(),
            segment_bytes: self.segment_bytes,
            cursor: Some(Cursor::default()),
        })
    }
}

/// Journal bytes read at a time when a feed reads history: what one reader holds.
pub const HISTORY_CHUNK_BYTES: usize = 256 * 1024;

/// Reads the next piece of a room's journal.
fn read_chunk(
    room: &Mutex<Room>,
    segment_bytes: u64,
    at: Cursor,
) -> Result<(Vec<Vec<u8>>, Cursor), HubError> {
    let mut g = lock(room);
    Ok(g.journal(segment_bytes)?
        .read_chunk(at, HISTORY_CHUNK_BYTES)?)
}

/// One participant's view of a room's telemetry.
pub struct Feed {
    room: Arc<Mutex<Room>>,
    live: broadcast::Receiver<Arc<Item>>,
    last: HashMap<u32, u64>,
    segment_bytes: u64,
    /// Where reading the journal continues while history (or a catch-up) is pending.
    cursor: Option<Cursor>,
}

impl Feed {
    /// The next piece of the room's stored history (frames from about
    /// [`HISTORY_CHUNK_BYTES`] of journal, none already delivered), oldest first; `None`
    /// once all of it was delivered. Reads on a blocking worker thread.
    pub async fn history_chunk(&mut self) -> Result<Option<Vec<Arc<Item>>>, HubError> {
        while let Some(at) = self.cursor {
            let (room, seg) = (self.room.clone(), self.segment_bytes);
            let (frames, next) = tokio::task::spawn_blocking(move || read_chunk(&room, seg, at))
                .await
                .map_err(|_| HubError::ReaderStopped)??;
            if let Some(items) = self.absorb(frames, next) {
                return Ok(Some(items));
            }
        }
        Ok(None)
    }

    /// Like [`Feed::history_chunk`], on the calling thread (which may block).
    pub fn history_chunk_blocking(&mut self) -> Result<Option<Vec<Arc<Item>>>, HubError> {
        while let Some(at) = self.cursor {
            let (frames, next) = read_chunk(&self.room, self.segment_bytes, at)?;
            if let Some(items) = self.absorb(frames, next) {
                return Ok(Some(items));
            }
        }
        Ok(None)
    }

    /// Takes a piece read from the journal: the items not yet delivered, `None` when
    /// there is nothing new in it (at the end, the reading stops).
    fn absorb(&mut self, frames: Vec<Vec<u8>>, next: Cursor) -> Option<Vec<Arc<Item>>> {
        if frames.is_empty() {
            self.cursor = None;
            return None;
        }
        self.cursor = Some(next);
        let items = self.admit(frames);
        (!items.is_empty()).then_some(items)
    }

    /// Items not yet delivered, in journal order (drops what was already delivered).
    fn admit(&mut self, frames: Vec<Vec<u8>>) -> Vec<Arc<Item>> {
        let mut out = Vec::new();
        for bytes in frames {
            // The journal only holds frames that decoded when stored.
            let Ok(item) = Item::new(bytes) else { continue };
            if self.fresh(item.source, item.sequence) {
                out.push(Arc::new(item));
            }
        }
        out
    }

    fn fresh(&mut self, source: u32, sequence: u64) -> bool {
        match self.last.get(&source) {
            Some(l) if sequence <= *l => false,
            _ => {
                self.last.insert(source, sequence);
                true
            }
        }
    }

    /// The whole remaining history at once (tests; readers take it in pieces).
    #[cfg(test)]
    fn take_history(&mut self) -> Vec<Arc<Item>> {
        let mut all = Vec::new();
        while let Some(items) = self.history_chunk_blocking().expect("history") {
            all.extend(items);
        }
        all
    }

    /// The next live frames, waiting for at least one; `None` when the hub is gone.
    ///
    /// A feed that fell more than the live buffer behind catches up from the journal, in
    /// pieces, so even a slow reader loses nothing and holds little.
    pub async fn next(&mut self) -> Option<Vec<Arc<Item>>> {
        loop {
            if self.cursor.is_some() {
                match self.history_chunk().await {
                    Ok(Some(items)) => return Some(items),
                    Ok(None) => continue,
                    Err(_) => return None,
                }
            }
            match self.live.recv().await {
                Ok(item) => {
                    let mut out = Vec::new();
                    if self.fresh(item.source, item.sequence) {
                        out.push(item);
                    }
                    while let Ok(i) = self.live.try_recv() {
                        if self.fresh(i.source, i.sequence) {
                            out.push(i);
                        }
                    }
                    if !out.is_empty() {
                        return Some(out);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Everything missed is in the journal: read it again from the start
                    // (what was delivered is skipped).
                    self.cursor = Some(Cursor::default());
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Body, VehicleStatus};

    fn frame(source: u32, sequence: u64) -> Vec<u8> {
        Frame {
            source,
            sequence,
            captured_at_us: 0,
            body: Body::Status(VehicleStatus::Departed),
        }
        .encode()
        .expect("encode")
    }

    fn hub(dir: &Path) -> Hub {
        Hub::new(dir, 1 << 20, &Registry::new()).expect("hub")
    }

    fn seqs(items: &[Arc<Item>]) -> Vec<(u32, u64)> {
        items.iter().map(|i| (i.source, i.sequence)).collect()
    }

    #[tokio::test]
    async fn joiner_gets_history_then_live_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().expect("tmp");
        let hub = Arc::new(hub(dir.path()));
        let r = hub.append("demo", (0..5).map(|s| frame(1, s)).collect());
        assert_eq!((r.stored, r.acks.clone()), (5, vec![(1, 4)]));
        let mut feed = hub.feed("demo").expect("feed");
        // Frames arriving while the joiner replays history, including a resend overlap.
        let r = hub.append("demo", (3..8).map(|s| frame(1, s)).collect());
        assert_eq!((r.stored, r.duplicates), (3, 2));
        let mut got = seqs(&feed.take_history());
        while got.len() < 8 {
            got.extend(seqs(&feed.next().await.expect("live")));
        }
        assert_eq!(got, (0..8).map(|s| (1, s)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_long_history_comes_in_bounded_pieces_then_live() {
        let dir = tempfile::tempdir().expect("tmp");
        let hub = hub(dir.path());
        let n = 20_000u64;
        let frames: Vec<Vec<u8>> = (0..n).map(|s| frame(1, s)).collect();
        let journal_bytes: usize = frames.iter().map(Vec::len).sum();
        assert!(journal_bytes > 2 * HISTORY_CHUNK_BYTES, "{journal_bytes}");
        for batch in frames.chunks(500) {
            assert!(hub.append("r", batch.to_vec()).error.is_none());
        }
        let mut feed = hub.feed("r").expect("feed");
        let mut got = Vec::new();
        let mut pieces = 0;
        while let Some(items) = feed.history_chunk().await.expect("history") {
            let bytes: usize = items.iter().map(|i| i.bytes.len()).sum();
            assert!(
                bytes <= HISTORY_CHUNK_BYTES + 300 * 1024,
                "{bytes} bytes at once"
            );
            got.extend(seqs(&items));
            pieces += 1;
        }
        assert!(pieces >= 2, "{pieces} pieces");
        assert_eq!(got.len() as u64, n);
        assert!(got.iter().zip(0..n).all(|(g, s)| *g == (1, s)));
        let _ = hub.append("r", vec![frame(1, n)]);
        assert_eq!(seqs(&feed.next().await.expect("live")), vec![(1, n)]);
    }

    #[test]
    fn the_last_position_is_the_newest_fix_by_capture_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let hub = hub(dir.path());
        let fix = |sequence: u64, captured_at_us: i64, lat: f64| {
            Frame {
                source: 9,
                sequence,
                captured_at_us,
                body: Body::Gps(crate::frame::Gps {
                    lat,
                    lon: 21.0,
                    accuracy_m: 5.0,
                    speed_mps: 0.0,
                    heading_deg: 0.0,
                }),
            }
            .encode()
            .expect("encode")
        };
        assert!(hub.last_position("r").is_none());
        let _ = hub.append(
            "r",
            vec![frame(1, 0), fix(0, 2_000, 52.2), fix(1, 1_000, 52.1)],
        );
        let p = hub.last_position("r").expect("a position");
        assert_eq!(
            (p.json["lat"].as_f64(), p.json["captured_at_us"].as_i64()),
            (Some(52.2), Some(2_000))
        );
        let _ = hub.append("r", vec![fix(2, 3_000, 52.3)]);
        assert_eq!(
            hub.last_position("r").expect("newer").json["lat"].as_f64(),
            Some(52.3)
        );
        // Asking never creates a room (nor its journal directory).
        assert!(hub.last_position("other").is_none());
        assert!(!dir.path().join("other").exists());
    }

    #[tokio::test]
    async fn a_feed_that_falls_behind_catches_up_from_the_journal() {
        let dir = tempfile::tempdir().expect("tmp");
        let hub = hub(dir.path());
        let mut feed = hub.feed("r").expect("feed");
        assert!(feed.take_history().is_empty());
        let n = (LIVE_BUFFER + 100) as u64;
        for s in 0..n {
            let r = hub.append("r", vec![frame(2, s)]);
            assert!(r.error.is_none());
        }
        let mut got = Vec::new();
        while got.len() < n as usize {
            got.extend(seqs(&feed.next().await.expect("live")));
        }
        assert_eq!(got, (0..n).map(|s| (2, s)).collect::<Vec<_>>());
    }

    #[test]
    fn bad_frames_stop_the_batch_after_storing_what_came_before() {
        let dir = tempfile::tempdir().expect("tmp");
        let hub = hub(dir.path());
        let mut bad = frame(1, 2);
        bad[2] = 99; // unknown version
        let r = hub.append("r", vec![frame(1, 0), frame(1, 1), bad, frame(1, 3)]);
        assert_eq!(r.acks, vec![(1, 1)]);
        assert_eq!(r.error.map(|e| e.code()), Some("frame_version"));
        assert!(matches!(
            hub.append("..", vec![]).error,
            Some(HubError::BadRoom)
        ));
        // Nothing already journaled was harmed.
        let mut feed = hub.feed("r").expect("feed");
        assert_eq!(seqs(&feed.take_history()), vec![(1, 0), (1, 1)]);
    }

    #[test]
    fn chat_messages_are_numbered_per_author() {
        let dir = tempfile::tempdir().expect("tmp");
        let hub = hub(dir.path());
        hub.chat("r", "dr-lead", "BP?", 1).expect("chat");
        hub.chat("r", "crew", "120/80", 2).expect("chat");
        hub.chat("r", "dr-lead", "thanks", 3).expect("chat");
        let mut feed = hub.feed("r").expect("feed");
        let got = seqs(&feed.take_history());
        let (lead, crew) = (chat_source("dr-lead"), chat_source("crew"));
        assert_eq!(got, vec![(lead, 0), (crew, 0), (lead, 1)]);
        assert!(lead & 0x8000_0000 != 0 && lead != crew);
    }

    #[test]
    fn an_unwritable_directory_is_an_error_and_nothing_is_acknowledged() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let hub = hub(&file);
        let r = hub.append("r", vec![frame(1, 0)]);
        assert!(r.acks.is_empty());
        assert_eq!(r.error.map(|e| e.code()), Some("journal_io"));
    }

    #[test]
    fn devices_may_not_write_what_participants_say() {
        let f = |source, body| Frame {
            source,
            sequence: 0,
            captured_at_us: 0,
            body,
        };
        let chat = Body::Chat {
            author: "dr-lead".into(),
            text: "x".into(),
        };
        let status = Body::Status(VehicleStatus::Departed);
        assert_eq!(device_refusal(&f(3, chat)), Some("participant_only"));
        assert_eq!(
            device_refusal(&f(chat_source("dr-lead"), status.clone())),
            Some("reserved_source")
        );
        assert_eq!(device_refusal(&f(3, status)), None);
    }

    #[test]
    fn a_source_without_numbers_left_refuses_chat_without_a_panic() {
        let dir = tempfile::tempdir().expect("tmp");
        let hub = hub(dir.path());
        // What a vehicle could do before devices were kept out of participants' sources.
        let poisoned = Frame {
            source: chat_source("dr-lead"),
            sequence: u64::MAX,
            captured_at_us: 0,
            body: Body::Status(VehicleStatus::Departed),
        };
        assert!(hub
            .append("r", vec![poisoned.encode().unwrap()])
            .error
            .is_none());
        let e = hub.chat("r", "dr-lead", "hello", 1).unwrap_err();
        assert_eq!(e.code(), "sequence_exhausted");
        hub.chat("r", "crew", "others still chat", 2).expect("chat");
    }
}
