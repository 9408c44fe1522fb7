//! Telemetry for medsfu: the versioned frame format, the server's durable journal, the
//! vehicle's outbox, and real ECG recordings (WFDB) to play as a defibrillator would.

#![forbid(unsafe_code)]

pub mod frame;
pub mod hub;
pub mod journal;
pub mod json;
pub mod outbox;
pub mod player;
pub mod wfdb;
