//! A Containerfile: any text is refused with an error or parsed into steps.
#![no_main]

use berth::image::containerfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = containerfile::parse(text);
});
