//! Helm's release records as read from a storage Secret (anyone who can write Secrets in a release
//! namespace can write one): decoding is bounded and never panics; a decoded record re-encodes to
//! itself, and marking it failed keeps it a record.
#![no_main]

use fhr_release::record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut decoded) = record::decode(data) {
        let encoded = record::encode(&decoded).expect("a decoded record encodes");
        assert_eq!(record::decode(&encoded).expect("round trip"), decoded);
        let _ = record::manifest(&decoded);
        if record::mark_failed(&mut decoded).is_ok() {
            assert_eq!(decoded["info"]["status"], "failed");
        }
    }
});
