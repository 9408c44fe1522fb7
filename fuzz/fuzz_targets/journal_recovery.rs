//! Journal recovery from whatever a crash or a damaged disk left: the input is split into
//! segment files. Opening gives an error or a journal that reads back its records, takes
//! a new one, and reopens to the same state.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medsfu_fuzz::targets::journal_recovery(data));
