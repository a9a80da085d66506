//! chartGitPath validation: whatever is accepted can only name a folder below the charts path.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(segments) = fhr_types::chart_path::validate_chart_path(path) {
        assert!(!segments.is_empty());
        for segment in segments {
            assert!(!segment.is_empty() && segment != "." && segment != "..");
            assert!(!segment.contains(['/', '\\']));
            assert!(!segment.chars().any(char::is_control));
            assert!(!segment.eq_ignore_ascii_case(".git"));
        }
    }
});
