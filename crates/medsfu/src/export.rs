//! `medsfu export`: one tar archive with everything recorded about an intervention (a
//! room): its recordings and voice archive, its telemetry as NDJSON and CSV, its chat, and
//! a manifest with the SHA-256 of every file; `medsfu export verify` checks an archive
//! against its manifest.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use medsfu_telemetry::frame::Frame;
use medsfu_telemetry::json::{digest, to_json};
use serde_json::{json, Value};

/// Name of the manifest inside an archive (its last entry).
pub const MANIFEST: &str = "manifest.json";

/// The intervention's record beside its media: `record/room.json` (the room, its lead
/// and every membership with its role and times, when the control API knows the room)
/// and `record/audit.ndjson` (every audit entry of the room, with its position and chain
/// hash, so that it can be checked against the whole trail).
pub fn record_files(
    store: Option<&dyn medsfu_store::Store>,
    audit: Option<&dyn medsfu_audit::AuditStore>,
    room: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    if let Some(store) = store {
        if let Some(r) = store.room(room)? {
            let members: Vec<Value> = store
                .members(room)?
                .into_iter()
                .map(|m| {
                    json!({
                        "member": m.member, "role": m.role,
                        "joined_unix_ms": m.joined_ms, "left_unix_ms": m.left_ms,
                    })
                })
                .collect();
            let v = json!({
                "room": r.name, "status": r.status.as_str(), "vehicle": r.vehicle,
                "opened_by": r.opened_by, "lead": r.lead,
                "opened_unix_ms": r.created_ms, "closed_unix_ms": r.closed_ms,
                "memberships": members,
            });
            let mut text = serde_json::to_vec_pretty(&v)?;
            text.push(b'\n');
            files.push(("record/room.json".to_owned(), text));
        }
    }
    if let Some(audit) = audit {
        let mut out = Vec::new();
        for e in audit
            .entries()?
            .into_iter()
            .filter(|e| e.event.room == room)
        {
            let v = json!({
                "seq": e.seq, "at_unix_ms": e.event.at_unix_ms, "actor": e.event.actor,
                "role": e.event.role, "action": e.event.action, "source": e.event.source,
                "detail": e.event.detail, "prev": e.prev, "hash": e.hash,
            });
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
        files.push(("record/audit.ndjson".to_owned(), out));
    }
    Ok(files)
}

/// The rooms matching `filter`, one line each: name, status, vehicle, opened and closed
/// (UTC), lead, and every member with their role.
pub fn find(
    store: &dyn medsfu_store::Store,
    filter: &medsfu_store::RoomFilter,
) -> Result<Vec<String>> {
    let when = |ms: i64| medsfu_record::utc::readable(ms.div_euclid(1000));
    let mut lines = Vec::new();
    for r in store.find_rooms(filter)? {
        let members: Vec<String> = store
            .members(&r.name)?
            .into_iter()
            .map(|m| format!("{}:{}", m.member, m.role))
            .collect();
        lines.push(format!(
            "{}\t{}\tvehicle={}\topened={}\tclosed={}\tlead={}\tmembers={}",
            r.name,
            r.status.as_str(),
            r.vehicle.as_deref().unwrap_or("-"),
            when(r.created_ms),
            r.closed_ms.map_or_else(|| "-".to_owned(), when),
            r.lead.as_deref().unwrap_or("-"),
            members.join(",")
        ));
    }
    Ok(lines)
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// One cell: a `*_at` column is the frame's `*_at_us` (microseconds since 1970) as
/// RFC 3339 UTC, which spreadsheets and people read; empty when the frame has none.
fn cell(r: &Value, column: &str) -> String {
    if column.ends_with("_at") {
        return r[format!("{column}_us")]
            .as_i64()
            .map(medsfu_record::utc::rfc3339_us)
            .unwrap_or_default();
    }
    csv(&r[column])
}

fn csv_table(rows: &[Value], columns: &[&str]) -> Vec<u8> {
    let mut out = columns.join(",");
    out.push('\n');
    for r in rows {
        let line: Vec<String> = columns.iter().map(|c| cell(r, c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out.into_bytes()
}

/// The files of a room's export: archive path and contents, in archive order.
pub fn collect(
    telemetry_dir: &Path,
    recordings_dir: &Path,
    room: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let journal = telemetry_dir.join(room);
    let frames = if journal.exists() {
        medsfu_telemetry::journal::read_only(&journal)
            .with_context(|| format!("reading the journal {}", journal.display()))?
    } else {
        Vec::new()
    };
    let mut ndjson = Vec::new();
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for bytes in &frames {
        let Ok((f, _)) = Frame::decode(bytes) else {
            continue;
        };
        let v = to_json(&f, bytes);
        ndjson.extend_from_slice(v.to_string().as_bytes());
        ndjson.push(b'\n');
        let kind = v["kind"].as_str().unwrap_or("other").to_owned();
        by_kind.entry(kind).or_default().push(v);
    }
    let recordings = recordings_dir.join(room);
    if frames.is_empty() && !recordings.exists() {
        bail!("nothing recorded for room {room:?}");
    }
    files.push(("telemetry/frames.ndjson".to_owned(), ndjson));
    let common = ["captured_at", "source", "seq"];
    let tables: [(&str, &str, &[&str]); 3] = [
        (
            "vital",
            "telemetry/vitals.csv",
            &["vital", "value", "unit", "measured_at"],
        ),
        (
            "gps",
            "telemetry/gps.csv",
            &["lat", "lon", "accuracy_m", "speed_mps", "heading_deg"],
        ),
        ("chat", "chat.csv", &["author", "text"]),
    ];
    for (kind, name, cols) in tables {
        let columns: Vec<&str> = common.iter().chain(cols.iter()).copied().collect();
        let rows = by_kind.get(kind).map(Vec::as_slice).unwrap_or(&[]);
        files.push((name.to_owned(), csv_table(rows, &columns)));
    }
    if recordings.exists() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&recordings)
            .with_context(|| format!("listing {}", recordings.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        for p in names {
            let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            files.push((format!("recordings/{name}"), data));
        }
    }
    Ok(files)
}

/// The manifest of `files`: room, creation time and each file's size and SHA-256.
pub fn manifest(room: &str, created_at: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let list: Vec<Value> = files
        .iter()
        .map(|(name, data)| json!({ "path": name, "bytes": data.len(), "sha256": digest(data) }))
        .collect();
    let m = json!({ "room": room, "created_at": created_at, "files": list });
    serde_json::to_vec_pretty(&m).unwrap_or_default()
}

/// Writes the archive: every file, then the manifest, each entry dated `mtime` (the
/// export's time, seconds since 1970).
pub fn write(
    out: &Path,
    room: &str,
    created_at: &str,
    mtime: u64,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    let f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut tar = tar::Builder::new(f);
    let mut add = |name: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
            .with_context(|| format!("writing {name}"))
    };
    for (name, data) in files {
        add(name, data)?;
    }
    add(MANIFEST, &manifest(room, created_at, files))?;
    tar.into_inner()
        .and_then(|f| f.sync_all())
        .with_context(|| format!("finishing {}", out.display()))?;
    Ok(())
}

/// What is wrong with an archive, by file; empty when it matches its manifest.
pub fn verify(archive: &Path) -> Result<Vec<String>> {
    let f =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(f);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut manifest: Option<Value> = None;
    for entry in tar.entries().context("reading the archive")? {
        let mut e = entry.context("reading an archive entry")?;
        let name = e
            .path()
            .context("entry name")?
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data)
            .with_context(|| format!("reading {name}"))?;
        if name == MANIFEST {
            manifest = Some(serde_json::from_slice(&data).context("manifest is not JSON")?);
        } else {
            seen.insert(name, digest(&data));
        }
    }
    let Some(m) = manifest else {
        return Ok(vec![format!("{MANIFEST} is missing")]);
    };
    let mut problems = Vec::new();
    let listed = m["files"].as_array().cloned().unwrap_or_default();
    for f in &listed {
        let path = f["path"].as_str().unwrap_or("");
        match seen.remove(path) {
            None => problems.push(format!("{path}: listed in the manifest but missing")),
            Some(d) if Some(d.as_str()) != f["sha256"].as_str() => problems.push(format!(
                "{path}: altered (SHA-256 differs from the manifest)"
            )),
            Some(_) => {}
        }
    }
    for extra in seen.keys() {
        problems.push(format!("{extra}: not in the manifest"));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("medsfu-export-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv(&json!("plain")), "plain");
        assert_eq!(csv(&json!("a, \"b\"")), "\"a, \"\"b\"\"\"");
        assert_eq!(csv(&json!(72.5)), "72.5");
        assert_eq!(csv(&Value::Null), "");
    }

    #[test]
    fn csv_times_are_rfc3339() {
        let rows = [
            json!({ "captured_at_us": 1_795_564_800_250_000i64, "source": 3 }),
            json!({ "source": 4 }),
        ];
        let t = String::from_utf8(csv_table(&rows, &["captured_at", "source"])).expect("utf-8");
        assert_eq!(t, "captured_at,source\n2026-11-25T00:00:00.250000Z,3\n,4\n");
    }

    #[test]
    fn an_archive_verifies_and_any_altered_missing_or_added_file_is_named() {
        let d = dir("verify");
        let files = vec![
            ("a.txt".to_owned(), b"first".to_vec()),
            ("recordings/b.ogg".to_owned(), vec![7u8; 3000]),
        ];
        let good = d.join("good.tar");
        write(&good, "r1", "20261125T000000Z", 1_795_564_800, &files).expect("write");
        assert_eq!(verify(&good).expect("verify"), Vec::<String>::new());
        // Entries are dated with the export, not 1970.
        let mut t = tar::Archive::new(std::fs::File::open(&good).expect("open"));
        for e in t.entries().expect("entries") {
            let e = e.expect("entry");
            assert_eq!(e.header().mtime().expect("mtime"), 1_795_564_800);
        }

        // One byte of a file's data changed in place.
        let mut bytes = std::fs::read(&good).expect("read");
        let at = bytes
            .windows(5)
            .position(|w| w == b"first")
            .expect("data in the archive");
        bytes[at] = b'F';
        let bad = d.join("bad.tar");
        std::fs::write(&bad, &bytes).expect("write");
        assert_eq!(
            verify(&bad).expect("verify"),
            vec!["a.txt: altered (SHA-256 differs from the manifest)".to_owned()]
        );

        // A file left out, another slipped in (written with the original manifest).
        let m = manifest("r1", "x", &files);
        let f = std::fs::File::create(d.join("swap.tar")).expect("create");
        let mut t = tar::Builder::new(f);
        for (name, data) in [("a.txt", &b"first"[..]), ("c.txt", b"new"), (MANIFEST, &m)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_cksum();
            t.append_data(&mut h, name, data).expect("append");
        }
        t.into_inner().expect("finish");
        assert_eq!(
            verify(&d.join("swap.tar")).expect("verify"),
            vec![
                "recordings/b.ogg: listed in the manifest but missing".to_owned(),
                "c.txt: not in the manifest".to_owned()
            ]
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
