//! The configuration loader: any text gives a Config or a list of problems (never a panic).
//! Host names are not resolved here (no network while fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = wxgate::config::parse_with(
            text,
            "fuzz.toml",
            &|name| (name.len() % 2 == 0).then(|| "0123456789abcdef0123456789abcdef".to_string()),
            false,
        );
    }
});
