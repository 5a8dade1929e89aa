//! Typed identifiers. Every id in a signature says what it names; a `BlobId`
//! cannot be passed where a `PackId` is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn from_slice(bytes: &[u8]) -> Option<$name> {
                bytes.try_into().ok().map($name)
            }

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }

            /// The first 8 hex digits, for tables and messages.
            pub fn short(&self) -> String {
                hex(&self.0[..4])
            }

            /// A fresh random id.
            pub fn random() -> $name {
                let mut bytes = [0u8; $len];
                getrandom::fill(&mut bytes).expect("the operating system's random source failed");
                $name(bytes)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<$name, ParseIdError> {
                let bytes = unhex(s).ok_or(ParseIdError)?;
                $name::from_slice(&bytes).ok_or(ParseIdError)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(|_| serde::de::Error::custom(concat!("invalid ", stringify!($name))))
            }
        }
    };
}

define_id!(
    /// A blob: the keyed BLAKE3 hash of a chunk's or tree's plaintext.
    BlobId, 32
);
define_id!(
    /// A pack file: the BLAKE3 hash of its bytes.
    PackId, 32
);
define_id!(
    /// An index file: the BLAKE3 hash of its bytes.
    IndexId, 32
);
define_id!(
    /// A snapshot or checkpoint manifest: the BLAKE3 hash of its bytes.
    SnapshotId, 32
);
define_id!(
    /// A key slot file: the BLAKE3 hash of its bytes.
    KeyId, 32
);
define_id!(
    /// A prune deletion plan: the BLAKE3 hash of its bytes.
    PlanId, 32
);
define_id!(
    /// A writing session: random, chosen by the process. Names its session
    /// marker and derives its encryption key.
    SessionId, 16
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseIdError;

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a valid id (expected hex digits)")
    }
}

impl std::error::Error for ParseIdError {}

/// The unkeyed BLAKE3 hash that names stored objects.
pub(crate) fn object_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ids_round_trip_through_hex_and_json(bytes in proptest::array::uniform32(any::<u8>())) {
            let id = BlobId(bytes);
            prop_assert_eq!(id.to_hex().parse::<BlobId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
            prop_assert!(id.to_hex().starts_with(&id.short()));
        }
    }

    #[test]
    fn malformed_hex_is_rejected() {
        for bad in ["", "abc", "zz", &"a".repeat(63), &"a".repeat(66)] {
            assert!(bad.parse::<BlobId>().is_err(), "{bad:?}");
        }
        assert!("ab".repeat(16).parse::<SessionId>().is_ok());
    }
}
