//! Secrets at rest: repository passwords and source credentials are sealed
//! with the server key (AES-256-GCM, a random 96-bit nonce per value, the
//! owning row's id as associated data, so a sealed value copied onto
//! another row does not open) before they reach the database.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use backstop_secret::Secret;

use crate::{Error, Result};

const PREFIX: &str = "v1:";

/// The server's key for secrets at rest. Every coordinator on one catalog
/// must use the same key.
#[derive(Clone, Debug)]
pub struct SecretKey(Secret<[u8; 32]>);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(Secret::new(bytes))
    }

    pub fn generate() -> SecretKey {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random number generator works");
        SecretKey(Secret::new(bytes))
    }

    /// Parse the 64 hex digits of a key file.
    pub fn from_hex(text: &str) -> Result<SecretKey> {
        let bytes = hex_decode(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| Error::Invalid("a server key is 64 hexadecimal digits".into()))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(SecretKey(Secret::new(key)))
    }

    pub fn to_hex(&self) -> String {
        hex_encode(self.0.expose())
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, self.0.expose()).expect("32 bytes is an AES-256 key"))
    }

    /// Seal `plain` for the row `owner`.
    pub fn seal(&self, owner: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator works");
        let mut buf = plain.to_vec();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(owner.as_bytes()), &mut buf)
            .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        let mut out = String::from(PREFIX);
        out.push_str(&hex_encode(&nonce));
        out.push_str(&hex_encode(&buf));
        out
    }

    /// Open a value sealed for `owner`.
    pub fn open(&self, owner: &str, sealed: &str) -> Result<Vec<u8>> {
        let corrupt = || {
            Error::Corrupt(format!(
                "the secret of {owner} cannot be opened: the server key differs from the one that stored it, or the \
                 value was changed"
            ))
        };
        let bytes = sealed.strip_prefix(PREFIX).and_then(hex_decode).ok_or_else(corrupt)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(corrupt());
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let mut buf = body.to_vec();
        let plain = self.aead().open_in_place(nonce, Aad::from(owner.as_bytes()), &mut buf).map_err(|_| corrupt())?;
        Ok(plain.to_vec())
    }
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// The secret part of a repository: its password and backend options.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct RepositorySecret {
    // Revealed to be sealed (`secrets.rs`), and nowhere else.
    #[serde(serialize_with = "backstop_secret::reveal")]
    pub password: Secret<String>,
    #[serde(serialize_with = "backstop_secret::reveal_pairs")]
    pub options: Vec<(String, Secret<String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_owner_and_key() {
        let key = SecretKey::generate();
        let sealed = key.seal("repo-1", b"hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open("repo-1", &sealed).unwrap(), b"hunter2");
        assert!(key.open("repo-2", &sealed).is_err(), "moved to another row");
        assert!(SecretKey::generate().open("repo-1", &sealed).is_err(), "another server key");
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(key.open("repo-1", &tampered).is_err(), "changed");
        assert!(key.open("repo-1", "garbage").is_err());
        assert!(key.open("repo-1", "v1:zz").is_err());
    }

    #[test]
    fn keys_round_trip_through_hex_and_never_print() {
        let key = SecretKey::generate();
        assert_eq!(SecretKey::from_hex(&key.to_hex()).unwrap().0, key.0);
        assert!(SecretKey::from_hex("abc").is_err());
        assert!(!format!("{key:?}").contains(&key.to_hex()));
    }
}
