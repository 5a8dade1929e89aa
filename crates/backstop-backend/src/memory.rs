//! An in-memory backend, for tests and fault injection.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::{Backend, Error, ErrorKind, ObjectMeta, PutMode, Result, validate_key, validate_prefix};

#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, (Vec<u8>, SystemTime)>>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Vec<u8>, SystemTime)>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory:".to_string()
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        validate_key(key)?;
        let mut objects = self.objects();
        if mode == PutMode::Create && objects.contains_key(key) {
            return Err(Error::new(ErrorKind::AlreadyExists, "object already exists").with_key(key));
        }
        objects.insert(key.to_string(), (data.to_vec(), SystemTime::now()));
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        validate_key(key)?;
        self.objects().get(key).map(|(data, _)| data.clone()).ok_or_else(|| Error::not_found(key))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        validate_key(key)?;
        let objects = self.objects();
        let (data, _) = objects.get(key).ok_or_else(|| Error::not_found(key))?;
        if range.start > range.end || range.end > data.len() as u64 {
            return Err(Error::new(
                ErrorKind::InvalidRange,
                format!("byte range {}..{} is beyond the object's {} bytes", range.start, range.end, data.len()),
            )
            .with_key(key));
        }
        Ok(data[range.start as usize..range.end as usize].to_vec())
    }

    fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        let objects = self.objects();
        let (data, modified) = objects.get(key).ok_or_else(|| Error::not_found(key))?;
        Ok(ObjectMeta { key: key.to_string(), size: data.len() as u64, last_modified: *modified })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        Ok(self
            .objects()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (data, modified))| ObjectMeta {
                key: k.clone(),
                size: data.len() as u64,
                last_modified: *modified,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.objects().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_backend_passes_the_conformance_suite() {
        crate::conformance::run_all(&super::MemoryBackend::new());
    }
}
