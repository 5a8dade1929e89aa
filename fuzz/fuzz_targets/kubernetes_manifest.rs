#![no_main]
//! A kubernetes snapshot's entries: YAML manifests read back for a restore.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = backstop_source::kubernetes::from_yaml(data) {
        // What was read must encode again.
        let _ = backstop_source::kubernetes::to_yaml(&manifest);
    }
});
