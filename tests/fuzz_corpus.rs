//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz targets'
//! entry points on the stable toolchain, so every input that ever found a bug, and every
//! seed, is checked by `cargo test`. `scripts/fuzz` runs the targets themselves.
//!
//! `RINGCC_BLESS_CORPUS=1 cargo test --test fuzz_corpus` writes the seeds
//! (`ringcc_fuzz::seeds`) into the corpus after a wire format change.

#[path = "../fuzz/src/lib.rs"]
mod entry;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// File name of a seed: its target and its index among that target's seeds.
fn seed_name(index: usize) -> String {
    format!("seed-{index:02}")
}

/// Seeds first (so blessing and replay do not race), then every corpus file.
#[test]
fn seeds_are_current_and_every_corpus_input_passes_its_target() {
    seeds_match_the_current_wire_format();
    every_corpus_input_passes_its_target();
}

fn seeds_match_the_current_wire_format() {
    let bless = std::env::var_os("RINGCC_BLESS_CORPUS").is_some();
    let mut counts = std::collections::BTreeMap::new();
    for (target, bytes) in entry::seeds() {
        let index = counts.entry(target).or_insert(0usize);
        let path = corpus_dir(target).join(seed_name(*index));
        *index += 1;
        if bless {
            std::fs::create_dir_all(corpus_dir(target)).expect("create the corpus folder");
            std::fs::write(&path, &bytes).expect("write a seed");
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (regenerate with RINGCC_BLESS_CORPUS=1 cargo test --test fuzz_corpus)", path.display())
        });
        assert!(committed == bytes, "{} is stale: rerun with RINGCC_BLESS_CORPUS=1", path.display());
    }
}

fn every_corpus_input_passes_its_target() {
    let mut replayed = 0;
    for (target, run) in entry::TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for target {target}");
        for path in files {
            let data = std::fs::read(&path).expect("read a corpus file");
            if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
                std::panic::resume_unwind(Box::new(format!("{}: {panic:?}", path.display())));
            }
            replayed += 1;
        }
    }
    println!("replayed {replayed} corpus inputs");
}
