//! Recording muxers: H.265, H.264 and VP8 in fragmented MP4, Opus in Ogg.
//!
//! Pure writers over any [`std::io::Write`]: no clock (timestamps are arguments), no
//! threads, no codec libraries. Both formats are written so that a file cut at any point
//! (the recorder killed, the disk full) is still playable up to the last complete
//! fragment or page: every fragment and page is written whole and then flushed.

#![forbid(unsafe_code)]

pub mod avc;
mod bits;
pub mod ecg_pdf;
pub mod fmp4;
pub mod hevc;
pub mod ogg;
#[cfg(test)]
mod testutil;
pub mod utc;

pub use avc::AvcSpsInfo;
pub use bits::SpsError;
pub use fmp4::{Fmp4Error, Fmp4Writer, VideoCodec};
pub use hevc::{ParameterSets, SpsInfo};
pub use ogg::{opus_packet_samples, OggError, OggOpusWriter};
