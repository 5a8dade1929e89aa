#![no_main]
use backstop_repo::crypto::{MasterKey, ObjectKind, open, open_in_place};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = MasterKey::from_secret([1; 32]);
    let Some((&kind, sealed)) = data.split_first() else { return };
    if let Some(kind) = ObjectKind::from_u8(kind % 9) {
        let _ = open(&key, kind, None, sealed, None);
        let _ = open(&key, kind, None, sealed, Some(1 << 20));
        // The restore's path: in place, with a scratch buffer left from before.
        let (mut in_place, mut scratch) = (sealed.to_vec(), vec![0u8; 100]);
        let _ = open_in_place(&key, kind, None, &mut in_place, Some(1 << 20), &mut scratch);
    }
});
