//! [`Secret`]: a password, a token or a key that is never shown by
//! accident. Its `Debug` writes `<redacted>`, and so does its `Serialize`:
//! a struct that holds one may be logged, printed or returned whole. The
//! few places where a secret must travel in clear (a client's request
//! that carries it inward, a worker's claim, a token shown once) say so
//! field by field with `#[serde(serialize_with = "backstop_secret::reveal")]`
//! (or [`reveal_option`], [`reveal_pairs`]); in code, [`Secret::expose`].
//!
//! Deserializing reads the value as it is, and the JSON Schema is the
//! inner value's: on the wire inward a secret is a plain value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret shows of itself.
pub const REDACTED: &str = "<redacted>";

/// A value that shows itself only when asked by name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub const fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The value itself. Never log or print it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Secret<T> {
        Secret(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Secret<String> {
        Secret(value.to_string())
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret<T>, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> schemars::JsonSchema for Secret<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// Serialize a secret in clear: `#[serde(serialize_with = "backstop_secret::reveal")]`.
pub fn reveal<T: Serialize, S: Serializer>(secret: &Secret<T>, serializer: S) -> Result<S::Ok, S::Error> {
    secret.0.serialize(serializer)
}

/// [`reveal`] for an optional secret.
pub fn reveal_option<T: Serialize, S: Serializer>(
    secret: &Option<Secret<T>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    secret.as_ref().map(Secret::expose).serialize(serializer)
}

/// [`reveal`] for `(name, secret)` pairs (a repository's backend options).
pub fn reveal_pairs<T: Serialize, S: Serializer>(
    pairs: &[(String, Secret<T>)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(pairs.iter().map(|(name, value)| (name, value.expose())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Login {
        user: String,
        password: Secret<String>,
        #[serde(serialize_with = "reveal")]
        token: Secret<String>,
    }

    #[test]
    fn a_secret_shows_only_when_revealed() {
        let login: Login = serde_json::from_str(r#"{"user": "ada", "password": "hunter2", "token": "bst_x"}"#).unwrap();
        assert_eq!(login.password.expose(), "hunter2");
        let debug = format!("{login:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("bst_x") && debug.contains(REDACTED), "{debug}");
        let json = serde_json::to_value(&login).unwrap();
        assert_eq!(json["password"], REDACTED);
        assert_eq!(json["token"], "bst_x", "the one field that says so travels in clear");
    }

    #[test]
    fn pairs_and_options_reveal_their_values_only() {
        #[derive(Serialize)]
        struct Access {
            #[serde(serialize_with = "reveal_pairs")]
            options: Vec<(String, Secret<String>)>,
            #[serde(serialize_with = "reveal_option")]
            key: Option<Secret<String>>,
        }
        let access = Access { options: vec![("region".into(), "eu".into())], key: Some("k".into()) };
        assert_eq!(
            serde_json::to_value(&access).unwrap(),
            serde_json::json!({"options": [["region", "eu"]], "key": "k"})
        );
    }
}
