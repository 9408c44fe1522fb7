//! Replays the committed fuzzing corpora (`fuzz/corpus/<target>/`) and the crashes found and
//! fixed (`fuzz/artifacts/<target>/`) through the fuzz targets' own code, as ordinary tests:
//! what fuzzing learned keeps being checked on stable Rust, in every CI run.

#[allow(dead_code)] // the fuzz crate uses every target; here `ALL` reaches them
#[path = "../../../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

/// Runs every input of every target; returns (target, inputs) pairs.
fn replay(kind: &str) -> Vec<(&'static str, usize)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind);
    targets::ALL
        .iter()
        .map(|(name, run)| {
            let dir = root.join(name);
            let mut inputs: Vec<_> = std::fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            inputs.sort();
            for path in &inputs {
                let data = std::fs::read(path).expect("corpus file");
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{name}: {} fails", path.display());
            }
            (*name, inputs.len())
        })
        .collect()
}

#[test]
fn every_target_has_a_corpus_and_replays_it_without_a_failure() {
    let counts = replay("corpus");
    println!("{counts:?}");
    for (name, n) in &counts {
        assert!(*n > 0, "{name} has no corpus in fuzz/corpus/{name}");
    }
}

#[test]
fn crashes_found_by_fuzzing_stay_fixed() {
    let counts = replay("artifacts");
    println!("{counts:?}");
}
