//! Key slots: the master key wrapped with a password-derived key
//! (`docs/format.md` §2). A repository has one or more; each opens it.

use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use super::{MasterKey, Password};
use crate::id::{hex, unhex};

const AAD: &[u8] = b"backstop key slot v1";

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB and two passes: about 0.1 s on one core of the machines we
    /// measured, above OWASP's minimum (19 MiB, 2 passes) for Argon2id.
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 2, parallelism: 1 }
    }
}

impl KdfParams {
    /// Limits that keep a forged key slot from exhausting memory or time.
    fn check(&self) -> Result<(), String> {
        if !(8..=4 * 1024 * 1024).contains(&self.memory_kib)
            || !(1..=64).contains(&self.iterations)
            || !(1..=16).contains(&self.parallelism)
        {
            return Err(format!("unsupported key derivation parameters {self:?}"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kdf {
    pub algorithm: String,
    pub version: u32,
    #[serde(flatten)]
    pub params: KdfParams,
    pub salt: String,
}

/// The JSON stored under `keys/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub version: u32,
    pub created: DateTime<Utc>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    pub kdf: Kdf,
    pub nonce: String,
    pub wrapped: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotError {
    /// The password does not open this slot.
    WrongPassword,
    /// The slot is not something this version can read.
    Invalid(String),
}

fn derive(password: &Password, salt: &[u8], params: &KdfParams) -> Result<[u8; 32], SlotError> {
    params.check().map_err(SlotError::Invalid)?;
    let argon_params = Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
        .map_err(|e| SlotError::Invalid(format!("key derivation parameters: {e}")))?;
    let mut kek = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password_into(password.as_bytes(), salt, &mut kek)
        .map_err(|e| SlotError::Invalid(format!("key derivation: {e}")))?;
    Ok(kek)
}

fn aead_key(kek: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).expect("32 bytes is an AES-256 key"))
}

impl KeySlot {
    /// Wrap `master` with `password`.
    pub fn wrap(master: &MasterKey, password: &Password, params: KdfParams, hostname: &str, username: &str) -> KeySlot {
        let mut salt = [0u8; 32];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut salt).expect("the operating system's random source failed");
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let kek = derive(password, &salt, &params).expect("the default parameters are valid");
        let mut wrapped = master.secret().to_vec();
        let tag = aead_key(&kek)
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut wrapped)
            .expect("sealing 32 bytes cannot fail");
        wrapped.extend_from_slice(tag.as_ref());
        KeySlot {
            version: 1,
            created: Utc::now(),
            hostname: hostname.to_string(),
            username: username.to_string(),
            kdf: Kdf { algorithm: "argon2id".into(), version: 19, params, salt: hex(&salt) },
            nonce: hex(&nonce),
            wrapped: hex(&wrapped),
        }
    }

    /// Unwrap the master key with `password`.
    pub fn unwrap(&self, password: &Password) -> Result<MasterKey, SlotError> {
        if self.version != 1 || self.kdf.algorithm != "argon2id" || self.kdf.version != 19 {
            return Err(SlotError::Invalid(format!(
                "key slot version {} with {} v{} is not supported",
                self.version, self.kdf.algorithm, self.kdf.version
            )));
        }
        let salt = unhex(&self.kdf.salt).ok_or_else(|| SlotError::Invalid("salt is not hex".into()))?;
        let nonce = unhex(&self.nonce).ok_or_else(|| SlotError::Invalid("nonce is not hex".into()))?;
        let mut wrapped = unhex(&self.wrapped).ok_or_else(|| SlotError::Invalid("wrapped key is not hex".into()))?;
        if salt.len() < 16 || wrapped.len() != 48 {
            return Err(SlotError::Invalid("salt or wrapped key has the wrong length".into()));
        }
        let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| SlotError::Invalid("bad nonce".into()))?;
        let kek = derive(password, &salt, &self.kdf.params)?;
        let secret =
            aead_key(&kek).open_in_place(nonce, Aad::from(AAD), &mut wrapped).map_err(|_| SlotError::WrongPassword)?;
        let secret: [u8; 32] = secret.try_into().map_err(|_| SlotError::Invalid("wrapped key length".into()))?;
        Ok(MasterKey::from_secret(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    #[test]
    fn the_right_password_unwraps_the_same_master_key() {
        let master = MasterKey::generate();
        let slot = KeySlot::wrap(&master, &Password::new("correct horse"), CHEAP, "host", "user");
        let json = serde_json::to_string(&slot).unwrap();
        let slot: KeySlot = serde_json::from_str(&json).unwrap();
        let opened = slot.unwrap(&Password::new("correct horse")).unwrap();
        assert_eq!(opened.secret(), master.secret());
    }

    #[test]
    fn a_wrong_password_is_reported_as_such() {
        let slot = KeySlot::wrap(&MasterKey::generate(), &Password::new("right"), CHEAP, "h", "u");
        assert_eq!(slot.unwrap(&Password::new("wrong")).unwrap_err(), SlotError::WrongPassword);
    }

    #[test]
    fn forged_parameters_are_refused_before_deriving() {
        let mut slot = KeySlot::wrap(&MasterKey::generate(), &Password::new("pw"), CHEAP, "h", "u");
        slot.kdf.params.memory_kib = u32::MAX;
        assert!(matches!(slot.unwrap(&Password::new("pw")), Err(SlotError::Invalid(_))));
    }
}
