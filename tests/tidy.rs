//! Structural rules of the code base that a compiler does not check.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The core is sans-IO: no sockets, clock, threads, event loop or randomness of its own.
#[test]
fn core_does_no_io() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core"), &mut files);
    assert!(!files.is_empty());
    let forbidden = ["std::net", "Instant::now", "SystemTime", "thread::spawn", "mio", "rand", "getrandom", "std::fs"];
    for f in files {
        let full = std::fs::read_to_string(&f).unwrap();
        // Unit tests may build an `Instant` to start from; the code under test may not. A
        // `*_tests.rs` file is such a test module, included only under `#[cfg(test)]`.
        if f.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_tests.rs")) {
            continue;
        }
        let text = full.split("#[cfg(test)]").next().unwrap_or_default();
        // Compare whole paths of identifiers (`a::b`), so "operand" does not match "rand".
        let tokens: Vec<&str> =
            text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).filter(|t| !t.is_empty()).collect();
        for word in forbidden {
            let hit = tokens.iter().any(|t| {
                *t == word
                    || t.starts_with(&format!("{word}::"))
                    || t.ends_with(&format!("::{word}"))
                    || t.contains(&format!("{word}::")) && t.starts_with(word)
            });
            assert!(!hit, "{} mentions {word}: src/core must not do I/O", f.display());
        }
    }
}

/// No grab-bag modules.
#[test]
fn no_utils_or_helpers_modules() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(name != "utils.rs" && name != "helpers.rs", "{} is a grab-bag module", f.display());
    }
}
