#![no_main]
//! The JSON objects: snapshot manifests, key slots, the config.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<backstop_repo::Snapshot>(data);
    let _ = serde_json::from_slice::<backstop_repo::crypto::keyslot::KeySlot>(data);
    let _ = serde_json::from_slice::<backstop_repo::Config>(data);
});
