//! A machine definition (/etc/berth/machines/NAME.machine): any text is refused with an error
//! or parsed, and what parses is written back to the same definition.
#![no_main]

use berth::machine::Definition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(definition) = Definition::from_ini("fuzz", text) {
        let written = definition.to_ini();
        let again = Definition::from_ini("fuzz", &written)
            .unwrap_or_else(|e| panic!("berth's own definition does not parse: {e}\n{written}"));
        assert_eq!(
            again, definition,
            "the definition changed when written:\n{written}"
        );
    }
});
