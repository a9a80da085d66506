//! Manifest files from git: any bytes must give manifests or per-document errors, never a panic,
//! and every manifest must be an object with apiVersion, kind and a name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (manifests, errors) = fhr_manifests::parse_file("releaseconfig/fuzz.yaml", data);
    for manifest in &manifests {
        assert!(manifest.line >= 1);
        assert!(manifest.object.is_object());
    }
    for error in &errors {
        // An error names the file it came from.
        assert!(error.to_string().contains("releaseconfig/fuzz.yaml"));
    }
});
