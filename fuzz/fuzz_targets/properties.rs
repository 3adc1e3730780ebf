//! `-p NAME=VALUE` unit properties, one per line: each is refused with an error or encoded.
#![no_main]

use berth::systemd::properties;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let assignments: Vec<String> = text.lines().map(str::to_owned).collect();
    let _ = properties::parse_all(&assignments);
});
