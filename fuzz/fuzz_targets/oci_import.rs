//! An OCI image layout tarball or a `docker save` archive: any input is refused with an error
//! or flattened into the target directory, and nothing is written outside it or its scratch.
#![no_main]

mod scratch;

use std::fs;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch::fresh("oci");
    let root = dir.join("root");
    let archive_files = dir.join("scratch");
    fs::create_dir(&root).expect("creating the target directory");
    fs::create_dir(&archive_files).expect("creating the archive's scratch directory");
    let fd = fs::File::open(&root).expect("opening the target directory");
    let mut tree = berth::image::tree::TreeWriter::new(fd.into());
    let _ = berth::image::import_archive(data, &mut tree, &archive_files);
    let _ = tree.finish();
    scratch::assert_only(&dir, &["root", "scratch"]);
    fs::remove_dir_all(&dir).expect("removing the scratch directory");
});
