#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = backstop_repo::tree::decode_list(data) {
        assert_eq!(backstop_repo::tree::encode_list(&list), data);
    }
});
