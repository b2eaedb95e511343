//! What `edge-node check` runs (`Config::parse`: TOML, defaults, `validate`) on arbitrary
//! text: an error or a configuration, never a panic.
#![no_main]

use edge_node::config::{Config, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, &Source::Embedded);
    }
});
