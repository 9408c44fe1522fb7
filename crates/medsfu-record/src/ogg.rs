//! Opus in Ogg (RFC 3533 framing, RFC 7845 encapsulation), written as it is recorded.
//!
//! The identification and comment headers each take a page; audio pages then hold about a
//! second of packets. Every page is written whole and flushed, so a file cut after any page
//! plays up to that page.

use std::io::Write;

/// An audio page is written once it holds this much audio (1 s at 48 kHz).
const PAGE_SAMPLES: u64 = 48_000;
/// The segment table of a page has at most this many entries.
const MAX_SEGMENTS: usize = 255;
/// Vendor string of the comment header.
const VENDOR: &str = "medsfu";
/// Longest packet that fits one page: 255 segments, the last shorter than 255 bytes.
const MAX_PACKET: usize = 255 * 255 - 1;

/// Header type flag: first page of the stream.
const FLAG_BOS: u8 = 0x02;
/// Header type flag: last page of the stream.
const FLAG_EOS: u8 = 0x04;
/// Granule position of a page on which no packet ends.
const NO_GRANULE: u64 = u64::MAX;

/// Why an Ogg Opus stream could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OggError {
    /// Writing to the output failed; the writer must not be used further.
    #[error("writing the Ogg file: {0}")]
    Io(#[from] std::io::Error),
    /// Channel mapping family 0 carries one or two channels.
    #[error("{0} channels: only mono and stereo are supported")]
    Channels(u8),
    /// A comment key must be printable ASCII without `=` (Vorbis comment rules).
    #[error("invalid comment key {0:?}")]
    CommentKey(String),
    /// The comment header does not fit one page.
    #[error("comment header of {0} bytes is too large")]
    HeaderTooLarge(usize),
    /// An Opus packet is at least one byte (its TOC).
    #[error("empty Opus packet")]
    EmptyPacket,
    /// The packet does not fit one page; no valid Opus packet is that large.
    #[error("Opus packet of {0} bytes is too large")]
    PacketTooLarge(usize),
}

/// The Ogg CRC-32 lookup table: polynomial 0x04C11DB7, MSB first.
const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04C1_1DB7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
}

/// The Ogg page checksum of `data` (CRC-32, polynomial 0x04C11DB7, no reflection, initial
/// value 0, no final xor), computed over a page whose CRC field is zero.
pub fn ogg_crc(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

/// Number of 48 kHz samples in an Opus packet, from its TOC byte (RFC 6716 §3.1); `None`
/// for an empty or malformed packet or one longer than the 120 ms a packet may hold.
pub fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        // SILK: 10, 20, 40, 60 ms
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid: 10, 20 ms
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT: 2.5, 5, 10, 20 ms
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(packet.get(1)? & 0x3F),
    };
    let samples = frame * frames;
    (frames > 0 && samples <= 5760).then_some(samples)
}

/// Writes one Opus stream as Ogg Opus (channel mapping family 0).
///
/// Packets are given whole, with their length in 48 kHz samples (see
/// [`opus_packet_samples`]), so the granule positions do not depend on RTP timestamps.
#[derive(Debug)]
pub struct OggOpusWriter<W: Write> {
    out: W,
    serial: u32,
    sequence: u32,
    /// Samples of all packets pushed, pre-skip included (RFC 7845 §4).
    granule: u64,
    segments: Vec<u8>,
    data: Vec<u8>,
    page_samples: u64,
}

impl<W: Write> OggOpusWriter<W> {
    /// Writes the `OpusHead` page (beginning of stream) and the `OpusTags` page (vendor
    /// "medsfu" and `comments` as `KEY=value`, e.g. participant, role, start time).
    ///
    /// `pre_skip` is the number of samples to drop at the start (the encoder's lookahead),
    /// `input_rate` the original sample rate, for information.
    pub fn new(
        mut out: W,
        serial: u32,
        channels: u8,
        pre_skip: u16,
        input_rate: u32,
        comments: &[(&str, &str)],
    ) -> Result<Self, OggError> {
        if !(1..=2).contains(&channels) {
            return Err(OggError::Channels(channels));
        }
        let mut head = b"OpusHead".to_vec();
        head.push(1); // version
        head.push(channels);
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&input_rate.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family 0: mono or stereo, no table

        let mut tags = b"OpusTags".to_vec();
        push_string(&mut tags, VENDOR);
        tags.extend_from_slice(&(comments.len() as u32).to_le_bytes());
        for (key, value) in comments {
            let valid =
                !key.is_empty() && key.bytes().all(|b| (0x20..=0x7D).contains(&b) && b != b'=');
            if !valid {
                return Err(OggError::CommentKey((*key).to_owned()));
            }
            push_string(&mut tags, &format!("{key}={value}"));
        }
        if tags.len() > MAX_PACKET {
            return Err(OggError::HeaderTooLarge(tags.len()));
        }

        let mut sequence = 0;
        for (flags, packet) in [(FLAG_BOS, &head), (0, &tags)] {
            write_page(
                &mut out,
                flags,
                0,
                serial,
                sequence,
                &lacing(packet.len()),
                packet,
            )?;
            sequence += 1;
        }
        Ok(OggOpusWriter {
            out,
            serial,
            sequence,
            granule: 0,
            segments: Vec::new(),
            data: Vec::new(),
            page_samples: 0,
        })
    }

    /// Adds one Opus packet lasting `samples_48k` samples at 48 kHz.
    ///
    /// The open page is written first when it already holds a second of audio or the
    /// packet's segments would not fit: a page is written when the packet after it arrives,
    /// so that the last page, written by [`Self::finish`] with the end-of-stream flag,
    /// always carries a packet.
    pub fn push(&mut self, packet: &[u8], samples_48k: u32) -> Result<(), OggError> {
        if packet.is_empty() {
            return Err(OggError::EmptyPacket);
        }
        if packet.len() > MAX_PACKET {
            return Err(OggError::PacketTooLarge(packet.len()));
        }
        let lace = lacing(packet.len());
        if !self.segments.is_empty()
            && (self.page_samples >= PAGE_SAMPLES
                || self.segments.len() + lace.len() > MAX_SEGMENTS)
        {
            self.write_open_page(0)?;
        }
        self.segments.extend_from_slice(&lace);
        self.data.extend_from_slice(packet);
        self.page_samples += u64::from(samples_48k);
        self.granule += u64::from(samples_48k);
        Ok(())
    }

    /// Writes the open page with the end-of-stream flag and returns the output.
    ///
    /// Its granule position is the total: nothing is trimmed from the end, as the real end
    /// of the audio is not known from the packets.
    pub fn finish(mut self) -> Result<W, OggError> {
        self.write_open_page(FLAG_EOS)?;
        Ok(self.out)
    }

    /// Samples at 48 kHz of all packets pushed, pre-skip included.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// The output, e.g. to see how far the file got.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    fn write_open_page(&mut self, flags: u8) -> Result<(), OggError> {
        // Every packet ends on the page it starts on, so the page's granule is the total.
        let granule = if self.segments.is_empty() {
            NO_GRANULE
        } else {
            self.granule
        };
        write_page(
            &mut self.out,
            flags,
            granule,
            self.serial,
            self.sequence,
            &self.segments,
            &self.data,
        )?;
        self.sequence = self.sequence.wrapping_add(1);
        self.segments.clear();
        self.data.clear();
        self.page_samples = 0;
        Ok(())
    }
}

/// Appends a 32-bit little-endian length and the string.
fn push_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// The lacing values of a packet of `len` bytes: 255 for each full segment, then the
/// remainder (0 when `len` is a multiple of 255, which marks the packet's end).
fn lacing(len: usize) -> Vec<u8> {
    let mut l = vec![255; len / 255];
    l.push((len % 255) as u8);
    l
}

/// Writes one page and flushes, so that the page is on disk as a whole before the next.
fn write_page(
    out: &mut impl Write,
    flags: u8,
    granule: u64,
    serial: u32,
    sequence: u32,
    segments: &[u8],
    data: &[u8],
) -> Result<(), OggError> {
    let mut page = Vec::with_capacity(27 + segments.len() + data.len());
    page.extend_from_slice(b"OggS");
    page.push(0); // stream structure version
    page.push(flags);
    page.extend_from_slice(&granule.to_le_bytes());
    page.extend_from_slice(&serial.to_le_bytes());
    page.extend_from_slice(&sequence.to_le_bytes());
    page.extend_from_slice(&[0; 4]); // CRC, computed with this field zero
    page.push(segments.len() as u8); // at most MAX_SEGMENTS, checked by the callers
    page.extend_from_slice(segments);
    page.extend_from_slice(data);
    let crc = ogg_crc(&page);
    page[22..26].copy_from_slice(&crc.to_le_bytes());
    out.write_all(&page)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{run, s, TempDir};

    /// One parsed Ogg page.
    #[derive(Debug)]
    struct Page {
        flags: u8,
        granule: u64,
        serial: u32,
        sequence: u32,
        crc_ok: bool,
        segments: Vec<u8>,
        body: Vec<u8>,
        /// Where the page starts in the file.
        offset: usize,
    }

    /// Splits a file into pages, checking each CRC with `ogg_crc`; panics on bad framing.
    fn pages(file: &[u8]) -> Vec<Page> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < file.len() {
            let p = &file[at..];
            assert_eq!(&p[..4], b"OggS", "capture pattern at {at}");
            assert_eq!(p[4], 0, "version");
            let n = usize::from(p[26]);
            let segments = p[27..27 + n].to_vec();
            let len = 27 + n + segments.iter().map(|&s| usize::from(s)).sum::<usize>();
            let mut zeroed = p[..len].to_vec();
            zeroed[22..26].fill(0);
            out.push(Page {
                flags: p[5],
                granule: u64::from_le_bytes(p[6..14].try_into().unwrap()),
                serial: u32::from_le_bytes(p[14..18].try_into().unwrap()),
                sequence: u32::from_le_bytes(p[18..22].try_into().unwrap()),
                crc_ok: ogg_crc(&zeroed) == u32::from_le_bytes(p[22..26].try_into().unwrap()),
                segments,
                body: p[27 + n..len].to_vec(),
                offset: at,
            });
            at += len;
        }
        out
    }

    /// The packets of a page sequence (a packet may continue onto the next page).
    fn packets(pages: &[Page]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for p in pages {
            let mut at = 0;
            for &lace in &p.segments {
                cur.extend_from_slice(&p.body[at..at + usize::from(lace)]);
                at += usize::from(lace);
                if lace < 255 {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
        out
    }

    /// ffmpeg's Ogg Opus of 3 s of a 440 Hz sine, 20 ms frames: (file, pre-skip, channels,
    /// audio packets).
    fn ffmpeg_opus(dir: &TempDir) -> (Vec<u8>, u16, u8, Vec<Vec<u8>>) {
        let path = dir.join("in.ogg");
        let (ok, _, err) = run(
            "ffmpeg",
            &[
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                "3",
                "-c:a",
                "libopus",
                "-b:a",
                "32k",
                "-frame_duration",
                "20",
                "-f",
                "ogg",
                "-y",
                s(&path),
            ],
        );
        assert!(ok, "ffmpeg: {err}");
        let file = std::fs::read(&path).unwrap();
        let all = packets(&pages(&file));
        let head = &all[0];
        assert_eq!(&head[..8], b"OpusHead");
        assert_eq!(&all[1][..8], b"OpusTags");
        let pre_skip = u16::from_le_bytes([head[10], head[11]]);
        (file, pre_skip, head[9], all[2..].to_vec())
    }

    /// ffprobe's codec, channels and duration, and the stream's comment tags.
    fn probe(path: &std::path::Path) -> (String, u32, f64, String) {
        let (ok, out, err) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,channels",
                "-show_entries",
                "format=duration",
                "-of",
                "compact=p=0:nk=1",
                s(path),
            ],
        );
        assert!(ok && err.is_empty(), "ffprobe: {err}");
        eprintln!(
            "ffprobe {}: {}",
            path.display(),
            out.trim().replace('\n', " / ")
        );
        let lines: Vec<&str> = out.lines().collect();
        let f: Vec<&str> = lines[0].split('|').collect();
        let (_, tags, _) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream_tags:format_tags",
                "-of",
                "flat",
                s(path),
            ],
        );
        (
            f[0].to_owned(),
            f[1].parse().unwrap(),
            lines[1].parse().unwrap(),
            tags,
        )
    }

    fn decode(path: &std::path::Path) -> (bool, String) {
        let (ok, _, err) = run("ffmpeg", &["-v", "error", "-i", s(path), "-f", "null", "-"]);
        (ok, err)
    }

    const COMMENTS: [(&str, &str); 3] = [
        ("MEDSFU_PARTICIPANT", "ambulance-7"),
        ("MEDSFU_ROLE", "vehicle"),
        ("MEDSFU_STARTED_AT", "2025-06-01T12:00:00Z"),
    ];

    #[test]
    fn remuxed_ffmpeg_opus_plays_with_its_packets_and_comments() {
        let dir = TempDir::new("ogg-remux");
        let (_, pre_skip, channels, input) = ffmpeg_opus(&dir);
        assert_eq!(pre_skip, 312);
        assert_eq!(
            input.len(),
            151,
            "3 s of 20 ms packets and the encoder's flush"
        );

        let mut w = OggOpusWriter::new(Vec::new(), 0xC0FFEE, channels, pre_skip, 48_000, &COMMENTS)
            .unwrap();
        for p in &input {
            let n = opus_packet_samples(p).unwrap();
            assert_eq!(n, 960, "20 ms packets");
            w.push(p, n).unwrap();
        }
        assert_eq!(w.granule(), 151 * 960);
        let file = w.finish().unwrap();
        let path = dir.join("out.ogg");
        std::fs::write(&path, &file).unwrap();

        let (codec, ch, duration, tags) = probe(&path);
        assert_eq!((codec.as_str(), ch), ("opus", u32::from(channels)));
        assert!((duration - 3.0).abs() <= 0.1, "duration {duration}");
        assert!(tags.contains("MEDSFU_ROLE=\"vehicle\""), "{tags}");
        assert!(tags.contains("ambulance-7"), "{tags}");
        assert_eq!(decode(&path), (true, String::new()));

        let pg = pages(&file);
        assert!(pg.iter().all(|p| p.crc_ok && p.serial == 0xC0FFEE));
        assert_eq!(
            pg.iter().map(|p| p.sequence).collect::<Vec<_>>(),
            (0..pg.len() as u32).collect::<Vec<_>>()
        );
        let flags: Vec<u8> = pg.iter().map(|p| p.flags).collect();
        assert_eq!(
            flags,
            [2, 0, 0, 0, 0, 4],
            "BOS, tags, three full pages, EOS"
        );
        assert_eq!(
            (pg[0].segments.len(), pg[1].segments.len()),
            (1, 1),
            "headers alone"
        );
        assert_eq!((pg[0].granule, pg[1].granule), (0, 0));
        let granules: Vec<u64> = pg[2..].iter().map(|p| p.granule).collect();
        assert_eq!(granules, [48_000, 96_000, 144_000, 144_960]);
        let out = packets(&pg);
        assert_eq!(&out[0][..8], b"OpusHead");
        assert_eq!(u16::from_le_bytes([out[0][10], out[0][11]]), pre_skip);
        assert_eq!(&out[1][..8], b"OpusTags");
        assert_eq!(&out[1][12..18], b"medsfu");
        assert_eq!(out[2..], input[..], "packets unchanged");
    }

    #[test]
    fn crc_matches_ffmpeg_pages_and_a_known_answer() {
        // CRC-32/CKSUM without its final xor: check value 0x765E7680 ^ 0xFFFFFFFF.
        assert_eq!(ogg_crc(b"123456789"), 0x89A1_897F);
        let dir = TempDir::new("ogg-crc");
        let (file, _, _, _) = ffmpeg_opus(&dir);
        let pg = pages(&file);
        assert_eq!(pg.len(), 6);
        assert!(
            pg.iter().all(|p| p.crc_ok),
            "our CRC agrees with ffmpeg's on every page"
        );
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_crc() {
        let dir = TempDir::new("ogg-flip");
        let (_, pre_skip, channels, input) = ffmpeg_opus(&dir);
        let mut w = OggOpusWriter::new(Vec::new(), 1, channels, pre_skip, 48_000, &[]).unwrap();
        for p in &input {
            w.push(p, 960).unwrap();
        }
        let mut file = w.finish().unwrap();
        let third = &pages(&file)[3];
        file[third.offset + 27 + third.segments.len() + 100] ^= 0x10;
        let pg = pages(&file);
        assert_eq!(
            pg.iter().map(|p| p.crc_ok).collect::<Vec<_>>(),
            [true, true, true, false, true, true]
        );
        let path = dir.join("flipped.ogg");
        std::fs::write(&path, &file).unwrap();
        let (_, err) = decode(&path);
        eprintln!("ffmpeg on the flipped file says: {}", err.trim());
        assert!(
            err.contains("CRC mismatch"),
            "ffmpeg notices the damaged page: {err}"
        );
    }

    #[test]
    fn a_file_cut_by_a_crash_plays_up_to_its_last_page() {
        let dir = TempDir::new("ogg-killed");
        let (_, pre_skip, channels, input) = ffmpeg_opus(&dir);
        let mut w =
            OggOpusWriter::new(Vec::new(), 7, channels, pre_skip, 48_000, &COMMENTS).unwrap();
        // Killed after 2.2 s: the first two seconds are on pages, the rest in memory.
        for p in &input[..110] {
            w.push(p, 960).unwrap();
        }
        let pg = pages(w.get_ref());
        assert_eq!(pg.len(), 4);
        assert_eq!(pg[3].granule, 96_000);
        let path = dir.join("killed.ogg");
        std::fs::write(&path, w.get_ref()).unwrap();
        assert_eq!(decode(&path), (true, String::new()));
        let (codec, _, duration, _) = probe(&path);
        assert_eq!(codec, "opus");
        assert!((duration - 2.0).abs() <= 0.1, "duration {duration}");
    }

    #[test]
    fn pages_hold_at_most_255_segments_with_correct_lacing() {
        let mut w = OggOpusWriter::new(Vec::new(), 9, 1, 0, 48_000, &[]).unwrap();
        // 2.5 ms CELT packets: 300 of them are 0.75 s, so the segment limit ends the page.
        for i in 0..300u32 {
            w.push(&[0x80, i as u8], 120).unwrap();
        }
        // Packets of 600 and 510 bytes: laced 255 255 90 and 255 255 0.
        let big = [vec![0xFC; 600], vec![0xFC; 510]];
        for p in &big {
            w.push(p, 960).unwrap();
        }
        let file = w.finish().unwrap();
        let pg = pages(&file);
        assert_eq!(pg.len(), 4);
        assert!(pg.iter().all(|p| p.crc_ok));
        assert_eq!(pg[2].segments, [2; 255]);
        assert_eq!(pg[2].granule, 255 * 120);
        assert_eq!(pg[3].segments[..45], [2; 45]);
        assert_eq!(pg[3].segments[45..], [255, 255, 90, 255, 255, 0]);
        assert_eq!(
            (pg[3].flags, pg[3].granule),
            (FLAG_EOS, 300 * 120 + 2 * 960)
        );
        let out = packets(&pg);
        assert_eq!(out.len(), 2 + 302);
        assert_eq!(out[2 + 300..], big[..]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(matches!(
            OggOpusWriter::new(Vec::new(), 0, 3, 0, 48_000, &[]),
            Err(OggError::Channels(3))
        ));
        assert!(matches!(
            OggOpusWriter::new(Vec::new(), 0, 1, 0, 48_000, &[("A=B", "c")]),
            Err(OggError::CommentKey(_))
        ));
        let huge = "x".repeat(70_000);
        assert!(matches!(
            OggOpusWriter::new(Vec::new(), 0, 1, 0, 48_000, &[("NOTE", &huge)]),
            Err(OggError::HeaderTooLarge(_))
        ));
        let mut w = OggOpusWriter::new(Vec::new(), 0, 1, 0, 48_000, &[]).unwrap();
        assert!(matches!(w.push(&[], 960), Err(OggError::EmptyPacket)));
        assert!(matches!(
            w.push(&vec![0; 70_000], 960),
            Err(OggError::PacketTooLarge(70_000))
        ));
        // Nothing was added by the refused packets: the stream ends with an empty page.
        let pg = pages(&w.finish().unwrap());
        assert_eq!(pg.len(), 3);
        assert_eq!(
            (pg[2].flags, pg[2].granule, pg[2].segments.len()),
            (FLAG_EOS, NO_GRANULE, 0)
        );
    }

    #[test]
    fn packet_durations_come_from_the_toc() {
        let toc = |config: u8, code: u8| (config << 3) | code;
        assert_eq!(
            opus_packet_samples(&[toc(0, 0)]),
            Some(480),
            "SILK NB 10 ms"
        );
        assert_eq!(
            opus_packet_samples(&[toc(3, 1)]),
            Some(5760),
            "2 x SILK 60 ms"
        );
        assert_eq!(
            opus_packet_samples(&[toc(9, 0)]),
            Some(960),
            "SILK WB 20 ms"
        );
        assert_eq!(
            opus_packet_samples(&[toc(12, 2), 5]),
            Some(960),
            "2 x hybrid 10 ms"
        );
        assert_eq!(
            opus_packet_samples(&[toc(15, 0)]),
            Some(960),
            "hybrid FB 20 ms"
        );
        assert_eq!(opus_packet_samples(&[toc(16, 0)]), Some(120), "CELT 2.5 ms");
        assert_eq!(
            opus_packet_samples(&[toc(29, 0)]),
            Some(240),
            "CELT FB 5 ms"
        );
        assert_eq!(
            opus_packet_samples(&[toc(31, 0)]),
            Some(960),
            "CELT FB 20 ms"
        );
        assert_eq!(
            opus_packet_samples(&[toc(16, 3), 0x80 | 48]),
            Some(5760),
            "48 x 2.5 ms"
        );
        assert_eq!(opus_packet_samples(&[toc(16, 3), 49]), None, "over 120 ms");
        assert_eq!(
            opus_packet_samples(&[toc(31, 3), 3]),
            Some(2880),
            "3 x 20 ms, count & 0x3F"
        );
        assert_eq!(opus_packet_samples(&[toc(31, 3), 0]), None, "no frames");
        assert_eq!(
            opus_packet_samples(&[toc(31, 3)]),
            None,
            "count byte missing"
        );
        assert_eq!(opus_packet_samples(&[]), None);
    }
}
