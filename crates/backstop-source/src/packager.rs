//! The registry of source kinds: every kind, `fs` included, is one
//! [`Packager`], and [`packager`] is the one place that maps a
//! [`SourceKind`] to it. A new kind is a new file with its `impl Packager`
//! and one line here; a capability it lacks does not compile
//! (decision 0010).

use backstop_repo::backup::BackupSource;
pub use backstop_types::SourceKind;
use serde_json::{Map, Value, json};

use crate::{Config, Error, Reach, RestoreContext, RestoreReport, Result, Touches};

/// What a kind of source can do. Every method is required: a kind says
/// what it does, or why it does not.
pub trait Packager: Sync {
    fn kind(&self) -> SourceKind;

    /// The configuration key a `KIND:TARGET` spec's target goes to
    /// (`image:/srv/vm.qcow2` → `path`); `None` for a kind without one.
    fn target_key(&self) -> Option<&'static str>;

    /// Check a source's configuration (its `hooks` already taken out)
    /// without running anything.
    fn validate(&self, config: &Config) -> Result<()>;

    /// The keys of a source's configuration and secrets (`hooks` aside),
    /// each with how it is given: the OpenAPI document's schema
    /// ([`config_schema`]) and the web UI's form are made from them;
    /// [`validate`](Packager::validate) checks the values.
    fn fields(&self) -> &'static [ConfigField];

    /// What the configuration makes a job reach on its worker's host (a
    /// source's, or with `restore` a restore target's): local paths, hosts,
    /// sockets, and anything of the workers' own, which only the system
    /// tenant may use. The service refuses a tenant's configuration that
    /// reaches beyond its grants.
    fn touches(&self, config: &Config, restore: bool) -> Result<Touches>;

    /// What to back up, reaching only what `reach` allows.
    fn backup(&self, config: &Config, reach: &Reach) -> Result<BackupSource>;

    /// The keys of a source's configuration (and secrets) that say where
    /// and as whom a restore *into that source* goes; `None` if the kind
    /// cannot be restored into.
    fn restore_connection(&self) -> Option<&'static [&'static str]>;

    /// Check the configuration of a restore into a system of this kind,
    /// with the restore's own options ([`RESTORE_KEYS`](crate::RESTORE_KEYS):
    /// `entry`, `clean`, …).
    fn validate_restore(&self, config: &Config) -> Result<()>;

    /// Put a snapshot's entries back into the system `config` names.
    fn restore(&self, ctx: &RestoreContext, config: &Config, reach: &Reach) -> Result<RestoreReport>;
}

/// The packager of `kind`.
pub fn packager(kind: SourceKind) -> &'static dyn Packager {
    match kind {
        SourceKind::Fs => &crate::fs::Fs,
        SourceKind::Image => &crate::image::Image,
        SourceKind::Command => &crate::command::Command,
        SourceKind::Postgres => &crate::db::POSTGRES,
        SourceKind::Mysql => &crate::db::MYSQL,
        SourceKind::Qemu => &crate::qemu::Qemu,
        SourceKind::Libvirt => &crate::libvirt::Libvirt,
        #[cfg(feature = "kubernetes")]
        SourceKind::Kubernetes => &crate::kubernetes::Kubernetes,
        #[cfg(not(feature = "kubernetes"))]
        SourceKind::Kubernetes => &Unbuilt(SourceKind::Kubernetes),
    }
}

/// One key of a kind's configuration (or secrets), as a form asks for it
/// and the API's schema describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigField {
    pub key: &'static str,
    /// What a form calls it.
    pub label: &'static str,
    pub value: FieldValue,
    pub required: bool,
    /// One line on what to give.
    pub help: &'static str,
}

/// How a configuration value is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue {
    /// A string.
    Text,
    /// A list of strings (a form: one per line).
    Lines,
    /// true or false.
    Flag,
    /// A credential: it goes in the source's `secrets`, sealed, never shown.
    Secret,
}

impl ConfigField {
    pub const fn text(key: &'static str, label: &'static str, help: &'static str) -> ConfigField {
        ConfigField { key, label, value: FieldValue::Text, required: false, help }
    }
    pub const fn lines(key: &'static str, label: &'static str, help: &'static str) -> ConfigField {
        ConfigField { key, label, value: FieldValue::Lines, required: false, help }
    }
    pub const fn flag(key: &'static str, label: &'static str, help: &'static str) -> ConfigField {
        ConfigField { key, label, value: FieldValue::Flag, required: false, help }
    }
    pub const fn secret(key: &'static str, label: &'static str, help: &'static str) -> ConfigField {
        ConfigField { key, label, value: FieldValue::Secret, required: false, help }
    }
    pub const fn required(self) -> ConfigField {
        ConfigField { required: true, ..self }
    }
}

/// The JSON Schema of a `kind` source's `config` (its keys, which are
/// required, `hooks` among them; credentials go in `secrets`), for the
/// OpenAPI document: a client checks before it sends, and the packager's
/// `validate` checks again, values too.
pub fn config_schema(kind: SourceKind) -> Value {
    let fields = packager(kind).fields();
    let mut properties = Map::new();
    for field in fields {
        let schema = match field.value {
            FieldValue::Text => json!({"type": "string"}),
            FieldValue::Lines => json!({"type": "array", "items": {"type": "string"}}),
            FieldValue::Flag => json!({"type": "boolean"}),
            FieldValue::Secret => continue,
        };
        properties.insert(field.key.to_string(), schema);
    }
    properties.insert("hooks".into(), json!({}));
    let required: Vec<&str> =
        fields.iter().filter(|f| f.required && f.value != FieldValue::Secret).map(|f| f.key).collect();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// A kind by its name (`postgres`), or an error that lists the kinds.
pub fn kind(name: &str) -> Result<SourceKind> {
    SourceKind::parse(name).ok_or_else(|| {
        let known: Vec<&str> = SourceKind::ALL.iter().map(|k| k.as_str()).collect();
        Error::Invalid(format!("unknown source kind {name:?} (known: {})", known.join(", ")))
    })
}

/// A kind this build left out (a cargo feature): every use says so.
#[cfg(not(feature = "kubernetes"))]
struct Unbuilt(SourceKind);

#[cfg(not(feature = "kubernetes"))]
impl Unbuilt {
    fn refuse<T>(&self) -> Result<T> {
        let kind = self.0.as_str();
        Err(Error::Invalid(format!("this build of Backstop has no {kind} support (built without the {kind} feature)")))
    }
}

#[cfg(not(feature = "kubernetes"))]
impl Packager for Unbuilt {
    fn kind(&self) -> SourceKind {
        self.0
    }
    fn target_key(&self) -> Option<&'static str> {
        Some("context")
    }
    fn validate(&self, _: &Config) -> Result<()> {
        self.refuse()
    }
    fn fields(&self) -> &'static [ConfigField] {
        &[]
    }
    fn touches(&self, _: &Config, _: bool) -> Result<Touches> {
        self.refuse()
    }
    fn backup(&self, _: &Config, _: &Reach) -> Result<BackupSource> {
        self.refuse()
    }
    fn restore_connection(&self) -> Option<&'static [&'static str]> {
        None
    }
    fn validate_restore(&self, _: &Config) -> Result<()> {
        self.refuse()
    }
    fn restore(&self, _: &RestoreContext, _: &Config, _: &Reach) -> Result<RestoreReport> {
        self.refuse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_packager() {
        for kind in SourceKind::ALL {
            assert_eq!(packager(kind).kind(), kind);
            assert_eq!(self::kind(kind.as_str()).unwrap(), kind);
        }
        let e = kind("ftp").unwrap_err().to_string();
        assert!(e.contains("unknown source kind \"ftp\"") && e.contains("fs, image, command"), "{e}");
    }

    /// The schema's keys are the ones validate takes: each one is known to
    /// it, and any other is refused.
    #[test]
    fn config_schemas_name_the_keys_validate_takes() {
        let required = |kind: SourceKind| -> Config {
            let value = match kind {
                SourceKind::Fs => json!({"paths": ["/srv"]}),
                SourceKind::Image => json!({"path": "/srv/vm.raw"}),
                SourceKind::Command => json!({"command": "true"}),
                SourceKind::Postgres => json!({"url": "postgres://db/app"}),
                SourceKind::Mysql => json!({"url": "mysql://db/app"}),
                SourceKind::Qemu => json!({"socket": "/run/vm1.qmp"}),
                SourceKind::Libvirt => json!({"domain": "vm1"}),
                SourceKind::Kubernetes => json!({}),
            };
            value.as_object().cloned().unwrap()
        };
        for kind in SourceKind::ALL {
            let schema = config_schema(kind);
            assert_eq!(schema["additionalProperties"], json!(false), "{kind:?}");
            for key in schema["properties"].as_object().unwrap().keys().filter(|k| *k != "hooks") {
                let mut config = required(kind);
                config.entry(key.clone()).or_insert(json!("x"));
                if let Err(e) = crate::validate(kind, &config) {
                    let e = e.to_string();
                    assert!(!e.contains("unknown") && !e.contains("no kubernetes support"), "{kind:?} {key}: {e}");
                }
            }
            let mut config = required(kind);
            config.insert("bogus".into(), json!(1));
            assert!(crate::validate(kind, &config).is_err(), "{kind:?} takes a key its schema does not name");
        }
    }
}
