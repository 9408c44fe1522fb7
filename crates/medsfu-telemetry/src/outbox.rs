//! The vehicle's durable outbox: every generated frame is kept until the server has
//! acknowledged it, across link drops and restarts of either side.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::frame::Frame;
use crate::journal::{Appended, Journal, JournalError};

/// Frames generated on the vehicle and the server's acknowledgements.
#[derive(Debug)]
pub struct Outbox {
    journal: Journal,
    acked: HashMap<u32, u64>,
    acked_path: PathBuf,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path) -> Result<Outbox, JournalError> {
        let (journal, _) = Journal::open(&dir.join("frames"), 16 << 20)?;
        let acked_path = dir.join("acked");
        let acked = match std::fs::read_to_string(&acked_path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| {
                    let (s, q) = l.split_once(' ')?;
                    Some((s.parse().ok()?, q.parse().ok()?))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => {
                return Err(JournalError::Io {
                    op: "read",
                    path: acked_path,
                    source,
                })
            }
        };
        Ok(Outbox {
            journal,
            acked,
            acked_path,
        })
    }

    /// The next sequence number for `source` (0 for a new source).
    pub fn next_sequence(&self, source: u32) -> u64 {
        self.journal.highest(source).map_or(0, |h| h + 1)
    }

    /// Stores a generated frame durably before it is sent.
    pub fn push(&mut self, frame: &Frame) -> Result<(), JournalError> {
        let bytes = frame.encode()?;
        if self.journal.append(&bytes)? == Appended::Stored {
            self.journal.sync()?;
        }
        Ok(())
    }

    /// Records that the server holds every frame of `source` up to `sequence`.
    pub fn ack(&mut self, source: u32, sequence: u64) -> Result<(), JournalError> {
        let a = self.acked.entry(source).or_insert(sequence);
        *a = (*a).max(sequence);
        // Written to a new file and renamed, so a crash leaves the old or the new, whole.
        let text: String = self
            .acked
            .iter()
            .map(|(s, q)| format!("{s} {q}\n"))
            .collect();
        let tmp = self.acked_path.with_extension("tmp");
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Io { op, path, source }
        };
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, &self.acked_path).map_err(io("rename", &self.acked_path))?;
        Ok(())
    }

    /// The highest acknowledged sequence of a source.
    pub fn acked(&self, source: u32) -> Option<u64> {
        self.acked.get(&source).copied()
    }

    /// How many frames are not acknowledged yet (each source numbers its frames 0, 1, 2...).
    pub fn unacked_count(&self) -> u64 {
        self.journal
            .sources()
            .map(|(s, h)| match self.acked.get(&s) {
                Some(a) => h.saturating_sub(*a),
                None => h + 1,
            })
            .sum()
    }

    /// Every frame not yet acknowledged, oldest first: what to resend after a reconnect.
    pub fn unacked(&self) -> Result<Vec<Vec<u8>>, JournalError> {
        Ok(self
            .journal
            .read_all()?
            .into_iter()
            .filter(|b| {
                Frame::decode(b)
                    .is_ok_and(|(f, _)| self.acked.get(&f.source).is_none_or(|a| f.sequence > *a))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Body, VehicleStatus};

    #[test]
    fn unacknowledged_frames_survive_a_restart_and_only_they_are_resent() {
        let dir = std::env::temp_dir().join(format!("medsfu-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let frame = |source, sequence| Frame {
            source,
            sequence,
            captured_at_us: 0,
            body: Body::Status(VehicleStatus::Departed),
        };
        let mut o = Outbox::open(&dir).unwrap();
        assert_eq!(o.next_sequence(1), 0);
        for s in 0..50 {
            o.push(&frame(1, s)).unwrap();
        }
        for s in 0..5 {
            o.push(&frame(2, s)).unwrap();
        }
        o.ack(1, 19).unwrap();
        o.ack(1, 10).unwrap(); // a late, older ack changes nothing
        drop(o);
        let o = Outbox::open(&dir).unwrap();
        assert_eq!(o.acked(1), Some(19));
        assert_eq!(o.next_sequence(1), 50);
        let pending: Vec<(u32, u64)> = o
            .unacked()
            .unwrap()
            .iter()
            .map(|b| {
                let (f, _) = Frame::decode(b).unwrap();
                (f.source, f.sequence)
            })
            .collect();
        let want: Vec<(u32, u64)> = (20..50)
            .map(|s| (1, s))
            .chain((0..5).map(|s| (2, s)))
            .collect();
        assert_eq!(pending, want);
        assert_eq!(o.unacked_count(), want.len() as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
