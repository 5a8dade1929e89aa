#![no_main]
//! A whole pack object as read from storage: trailer, sealed header, entries.
use backstop_backend::{Backend, MemoryBackend, PutMode};
use backstop_repo::PackId;
use backstop_repo::crypto::MasterKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let backend = MemoryBackend::new();
    let id = PackId([7; 32]);
    backend.put(&backstop_repo::pack::pack_key(&id), data, PutMode::Overwrite).unwrap();
    let key = MasterKey::from_secret([1; 32]);
    let _ = backstop_repo::pack::reader::read_header(&backend, &key, &id, data.len() as u64);
});
