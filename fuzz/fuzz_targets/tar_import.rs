//! A tar archive (plain or compressed), unpacked with the importer's confinement: any input is
//! refused with an error or unpacked, and nothing is ever written outside the target directory.
#![no_main]

mod scratch;

use std::fs;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch::fresh("tar");
    let root = dir.join("root");
    let input = dir.join("input");
    fs::create_dir(&root).expect("creating the target directory");
    fs::write(&input, data).expect("writing the input");
    let file = fs::File::open(&input).expect("opening the input");
    let _ = berth::image::unpack_tar(file, &root);
    scratch::assert_only(&dir, &["input", "root"]);
    fs::remove_dir_all(&dir).expect("removing the scratch directory");
});
