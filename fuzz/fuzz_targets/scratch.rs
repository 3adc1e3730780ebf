//! Scratch directories for the importer targets, on tmpfs, and the check that an importer wrote
//! nothing beside its target.

use std::fs;
use std::path::{Path, PathBuf};

/// A fresh, empty directory for one input.
pub fn fresh(target: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/dev/shm/berth-fuzz-{target}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).expect("creating the scratch directory");
    dir
}

/// `dir` holds exactly `names`: the importer wrote nothing outside what it was given.
pub fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = fs::read_dir(dir)
        .expect("listing the scratch directory")
        .map(|e| {
            e.expect("listing")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    assert_eq!(
        found, names,
        "the importer wrote outside its target directory"
    );
}
