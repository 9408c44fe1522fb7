//! Telemetry for medsfu: real ECG recordings to replay (WFDB), and more to come (the
//! frame format and the durable journal of issue 5).

#![forbid(unsafe_code)]

pub mod frame;
pub mod journal;
pub mod wfdb;
