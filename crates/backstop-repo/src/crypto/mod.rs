//! Keys and sealing.
//!
//! [`MasterKey`] holds the repository's secret and the keys derived from it
//! (`docs/format.md` §2). [`Sealer`] encrypts objects for one writing session
//! with nonces that cannot repeat; [`open`] decrypts any sealed object.
//! [`keyslot`] wraps the master key with a password.

pub mod keyslot;
mod seal;

use std::fmt;

pub use seal::{Compression, ObjectKind, SEAL_OVERHEAD, SealError, Sealer, open, open_in_place};

use backstop_secret::Secret;

use crate::id::BlobId;

/// The repository's master secret and the keys derived from it.
pub struct MasterKey {
    secret: [u8; 32],
    enc: [u8; 32],
    id: [u8; 32],
    gear: [u8; 32],
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random source failed");
        MasterKey::from_secret(secret)
    }

    pub fn from_secret(secret: [u8; 32]) -> MasterKey {
        MasterKey {
            enc: blake3::derive_key("backstop 2026-11-22 blob encryption v1", &secret),
            id: blake3::derive_key("backstop 2026-11-22 blob id v1", &secret),
            gear: blake3::derive_key("backstop 2026-11-22 chunker gear v1", &secret),
            secret,
        }
    }

    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    pub(crate) fn enc_key(&self) -> &[u8; 32] {
        &self.enc
    }

    pub(crate) fn gear_key(&self) -> &[u8; 32] {
        &self.gear
    }

    /// The id of a blob with this plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id, plaintext).as_bytes())
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        for key in [&mut self.secret, &mut self.enc, &mut self.id, &mut self.gear] {
            // Volatile so the wipe is not optimised away.
            for b in key.iter_mut() {
                // SAFETY: `b` is a valid, aligned, exclusive reference.
                unsafe { std::ptr::write_volatile(b, 0) };
            }
        }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// A password. `Debug` never shows it.
#[derive(Clone, Debug)]
pub struct Password(Secret<String>);

impl Password {
    pub fn new(password: impl Into<String>) -> Password {
        Password(Secret::new(password.into()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.expose().as_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.0.expose().is_empty()
    }

    /// The password itself, for handing it to the service (which stores
    /// it sealed). Never print it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_key_material() {
        let key = MasterKey::from_secret([7; 32]);
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
        assert_eq!(format!("{:?}", Password::new("hunter2")), "Password(<redacted>)");
    }

    #[test]
    fn blob_ids_are_keyed() {
        let a = MasterKey::from_secret([1; 32]);
        let b = MasterKey::from_secret([2; 32]);
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"), "ids differ between repositories");
        assert_ne!(a.blob_id(b"x").0, *blake3::hash(b"x").as_bytes(), "ids are not the plain hash");
    }
}
