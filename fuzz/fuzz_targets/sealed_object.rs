#![no_main]
use backstop_repo::crypto::{MasterKey, ObjectKind, open};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = MasterKey::from_secret([1; 32]);
    let Some((&kind, sealed)) = data.split_first() else { return };
    if let Some(kind) = ObjectKind::from_u8(kind % 9) {
        let _ = open(&key, kind, None, sealed, None);
        let _ = open(&key, kind, None, sealed, Some(1 << 20));
    }
});
