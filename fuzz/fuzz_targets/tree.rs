#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = backstop_repo::tree::Tree::decode(data) {
        // What decodes must re-encode to the same bytes (one canonical form).
        assert_eq!(tree.encode(), data);
    }
});
