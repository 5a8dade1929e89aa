//! Damage records (`docs/format.md` §6): copies of blobs found damaged or
//! lost — by check, verify or restore — written down so that nothing
//! deduplicates against them again. The index is read without them, so the
//! next backup of the same data stores a fresh copy (and every snapshot
//! that needs the blob is whole again); `repair packs` salvages the intact
//! rest of a damaged pack and deletes it, and with it its records.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{ObjectKind, Sealer};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, SessionId};
use crate::index::IndexFile;
use crate::pack::BlobKind;
use crate::repository::{Damage, Repository};

/// One stored copy of a blob that does not open (or whose pack is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DamagedBlob {
    #[serde(with = "kind_name")]
    pub kind: BlobKind,
    pub id: BlobId,
    pub pack: PackId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DamageRecord {
    pub time: DateTime<Utc>,
    /// `check`, `verify`, `restore`.
    pub found_by: String,
    pub blobs: Vec<DamagedBlob>,
}

/// Every damage record: its key, and what it says.
pub type Records = Vec<(String, DamageRecord)>;

mod kind_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::pack::BlobKind;

    pub fn serialize<S: Serializer>(kind: &BlobKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match kind {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BlobKind, D::Error> {
        match String::deserialize(d)?.as_str() {
            "data" => Ok(BlobKind::Data),
            "tree" => Ok(BlobKind::Tree),
            other => Err(serde::de::Error::custom(format!("unknown blob kind {other:?}"))),
        }
    }
}

/// The damaged copies every record names.
pub fn damaged_set(records: &Records) -> HashSet<DamagedBlob> {
    records.iter().flat_map(|(_, r)| r.blobs.iter().copied()).collect()
}

/// Leave the damaged copies out of index files as they were read.
pub fn without_damaged(files: &mut [(crate::id::IndexId, IndexFile)], damaged: &HashSet<DamagedBlob>) {
    if damaged.is_empty() {
        return;
    }
    for (_, file) in files {
        for pack in &mut file.packs {
            let id = pack.id;
            pack.blobs.retain(|b| !damaged.contains(&DamagedBlob { kind: b.kind, id: b.id, pack: id }));
        }
    }
}

impl Repository {
    /// Write down damaged copies not already recorded. Returns how many
    /// were new.
    pub fn record_damage(&self, found_by: &str, blobs: &[DamagedBlob]) -> Result<usize> {
        let (records, _) = self.damage_records()?;
        let known = damaged_set(&records);
        let mut new: Vec<DamagedBlob> = blobs.iter().filter(|b| !known.contains(b)).copied().collect();
        new.sort_by_key(|b| (b.pack, b.kind, b.id));
        new.dedup();
        if new.is_empty() {
            return Ok(0);
        }
        let record = DamageRecord { time: Utc::now(), found_by: found_by.to_string(), blobs: new.clone() };
        let json = serde_json::to_vec(&record).map_err(|e| Error::Invalid(format!("encoding a damage record: {e}")))?;
        let sealer = Sealer::new(self.key(), SessionId::random());
        self.put_sealed(&sealer, "damaged", ObjectKind::Damage, &json)?;
        Ok(new.len())
    }

    /// Every readable damage record, and the ones that could not be read.
    pub fn damage_records(&self) -> Result<(Records, Vec<Damage>)> {
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for meta in self.backend().list("damaged/")? {
            let record = self.get_sealed(&meta.key, ObjectKind::Damage, false).and_then(|plain| {
                serde_json::from_slice::<DamageRecord>(&plain)
                    .map_err(|e| Error::corrupt(meta.key.clone(), format!("not a damage record: {e}")))
            });
            match record {
                Ok(r) => out.push((meta.key, r)),
                Err(Error::Backend(e)) if e.is_not_found() => {} // removed meanwhile
                Err(Error::Corrupt { object, reason }) => unreadable.push(Damage { object, problem: reason }),
                Err(e) => return Err(e),
            }
        }
        Ok((out, unreadable))
    }

    /// Remove the records whose every pack is gone (deleted by prune or
    /// repair): they can name nothing that is still read.
    pub fn forget_damage_of_deleted_packs(&self, present: &HashSet<PackId>) -> Result<usize> {
        let (records, _) = self.damage_records()?;
        let mut removed = 0;
        for (key, record) in records {
            if record.blobs.iter().all(|b| !present.contains(&b.pack)) {
                self.backend().delete(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
