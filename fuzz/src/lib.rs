//! medsfu's fuzz targets as plain functions (run by cargo-fuzz from `fuzz_targets/`, and
//! replayed over the committed corpora by `crates/medsfu/tests/fuzz_corpora.rs`).

pub mod targets;
