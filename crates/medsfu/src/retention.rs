//! Retention of the voice archive: files older than the configured age are deleted.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Deletes voice-archive files (and their metadata) under `dir` (one subdirectory per
/// room) last written more than `max_age` before `now`; returns what was deleted.
/// On-demand recordings and screenshots are kept: they were asked for.
pub fn sweep(dir: &Path, max_age: Duration, now: SystemTime) -> Vec<PathBuf> {
    let mut deleted = Vec::new();
    let Ok(rooms) = std::fs::read_dir(dir) else {
        return deleted;
    };
    for room in rooms
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
    {
        let Ok(files) = std::fs::read_dir(&room) else {
            continue;
        };
        for f in files.filter_map(|e| e.ok()) {
            let name = f.file_name().to_string_lossy().into_owned();
            if !name.contains("-voice-") {
                continue;
            }
            let old = f
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > max_age);
            if old && std::fs::remove_file(f.path()).is_ok() {
                deleted.push(f.path());
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_voice_files_older_than_the_retention_go() {
        let d = std::env::temp_dir().join(format!("medsfu-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let room = d.join("r1");
        std::fs::create_dir_all(&room).unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        for (name, age) in [
            ("a-voice-T1-cabin_audio.ogg", 40 * day),
            ("a-voice-T1-cabin_audio.json", 40 * day),
            ("b-voice-T3-cabin_audio.ogg", 2 * day),
            ("a-recording-T2-roof_camera.mp4", 40 * day),
        ] {
            let f = std::fs::File::create(room.join(name)).unwrap();
            f.set_modified(now - age).unwrap();
        }
        let mut gone: Vec<String> = sweep(&d, 30 * day, now)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            ["a-voice-T1-cabin_audio.json", "a-voice-T1-cabin_audio.ogg"]
        );
        assert!(room.join("b-voice-T3-cabin_audio.ogg").exists());
        assert!(room.join("a-recording-T2-roof_camera.mp4").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
