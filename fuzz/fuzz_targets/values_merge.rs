//! Merging values files (valuesFrom in order, then spec.values): never a panic, and the overlay
//! always wins: every top-level key of the overlay ends up with the overlay's value unless both
//! are maps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (left, right) = data.split_at(split);
    let right = right.get(1..).unwrap_or_default();
    let (Ok(Value::Object(mut base)), Ok(Value::Object(overlay))) = (
        serde_json::from_slice::<Value>(left),
        serde_json::from_slice::<Value>(right),
    ) else {
        return;
    };
    let expected: Map<String, Value> = overlay.clone();
    fhr_types::values::merge_into(&mut base, overlay);
    for (key, value) in expected {
        let merged = base.get(&key).expect("an overlay key is kept");
        if !(value.is_object() && merged.is_object()) {
            assert_eq!(merged, &value);
        }
    }
});
