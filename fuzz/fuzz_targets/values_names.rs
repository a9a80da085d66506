//! `--set`-style value names and whole `spec.values` lists: bounded, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = fhr_types::values::parse_name(name);
    }
    // The same bytes as a values list (or map) the API server could hold.
    if let Ok(values) = serde_json::from_slice::<fhr_types::Values>(data) {
        if let Ok(tree) = values.to_tree() {
            // The tree must serialise: no cycles, nothing unrepresentable.
            let _ = serde_json::to_vec(&tree).expect("a values tree serialises");
        }
    }
});
