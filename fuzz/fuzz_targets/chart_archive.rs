//! Vendored subchart archives from a chart repository: the check streams any bytes in bounded
//! memory and time, and never panics (limits small, so the fuzzer reaches them).
#![no_main]

use fhr_release::chart_archives::{ArchiveLimits, check_archive_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ArchiveLimits {
        max_expanded_bytes: 1 << 20,
        max_file_bytes: 64 << 10,
        max_entries: 100,
        max_nesting: 2,
    };
    let _ = check_archive_stream(data, limits);
});
