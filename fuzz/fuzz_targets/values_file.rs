//! Values files from valuesFrom ConfigMap and Secret keys: bounded parsing, no panic, and an error
//! never repeats the file's content (it may be secret).
#![no_main]

use fhr_release::values_file::{Redactor, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(map) => {
            let mut redactor = Redactor::default();
            let tree = serde_json::Value::Object(map);
            redactor.remember(&tree);
            let shown = redactor.redact(&tree.to_string());
            let _ = shown;
        }
        Err(message) => {
            // The message is one of a few fixed texts with a line number.
            assert!(message.len() < 64, "{message}");
        }
    }
});
