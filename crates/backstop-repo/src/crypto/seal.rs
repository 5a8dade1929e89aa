//! Sealed objects: `session(16) || nonce(12) || AES-256-GCM(encoding || payload) || tag(16)`
//! (`docs/format.md` §3).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::MasterKey;
use crate::id::{BlobId, SessionId};

const SESSION_LEN: usize = 16;
const HEADER_LEN: usize = SESSION_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Bytes a sealed object adds to its payload: session, nonce, encoding byte, tag.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

const ENCODING_RAW: u8 = 0;
const ENCODING_ZSTD: u8 = 1;
/// Decompressed objects larger than this are refused as damaged.
const MAX_PLAINTEXT: u64 = 16 << 30;

/// What each sealed object is, bound into its authentication tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectKind {
    Config = 0,
    Data = 1,
    Tree = 2,
    PackHeader = 3,
    Index = 4,
    Snapshot = 5,
    Session = 7,
    Plan = 8,
    JobLog = 9,
    Damage = 10,
}

impl ObjectKind {
    pub fn from_u8(v: u8) -> Option<ObjectKind> {
        Some(match v {
            0 => ObjectKind::Config,
            1 => ObjectKind::Data,
            2 => ObjectKind::Tree,
            3 => ObjectKind::PackHeader,
            4 => ObjectKind::Index,
            5 => ObjectKind::Snapshot,
            7 => ObjectKind::Session,
            8 => ObjectKind::Plan,
            9 => ObjectKind::JobLog,
            10 => ObjectKind::Damage,
            _ => return None,
        })
    }
}

/// How to compress a payload before sealing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// zstd at this level, skipped for data that looks incompressible.
    Zstd(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// Shorter than a sealed object can be.
    Truncated,
    /// The authentication tag does not match: damaged, tampered with, moved,
    /// or sealed with another key.
    Authentication,
    UnknownEncoding(u8),
    Decompression(String),
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealError::Truncated => f.write_str("too short to be a sealed object"),
            SealError::Authentication => {
                f.write_str("authentication failed (the bytes were changed, or belong elsewhere)")
            }
            SealError::UnknownEncoding(e) => write!(f, "unknown encoding {e}"),
            SealError::Decompression(e) => write!(f, "decompression failed: {e}"),
        }
    }
}

fn aad(kind: ObjectKind, id: Option<&BlobId>) -> [u8; 37] {
    let mut aad = [0u8; 37];
    aad[..4].copy_from_slice(b"BSv1");
    aad[4] = kind as u8;
    if let Some(id) = id {
        aad[5..].copy_from_slice(id.as_bytes());
    }
    aad
}

fn session_key(master: &MasterKey, session: &[u8]) -> LessSafeKey {
    let key = blake3::keyed_hash(master.enc_key(), session);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32 bytes is an AES-256 key"))
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Seals objects for one writing session. Shared by all threads of a
/// process; the nonce counter is atomic.
pub struct Sealer {
    session: SessionId,
    key: LessSafeKey,
    counter: AtomicU64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("session", &self.session).finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(master: &MasterKey, session: SessionId) -> Sealer {
        Sealer { key: session_key(master, session.as_bytes()), session, counter: AtomicU64::new(0) }
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Seal `payload`. `id` is the blob id for data and tree blobs.
    pub fn seal(&self, kind: ObjectKind, id: Option<&BlobId>, payload: &[u8], compression: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(kind, id, payload, compression, &mut out);
        out
    }

    /// [`seal`](Self::seal) into `out` (cleared first), so that a caller
    /// sealing many blobs reuses one buffer instead of faulting in fresh
    /// memory for each.
    pub fn seal_into(
        &self,
        kind: ObjectKind,
        id: Option<&BlobId>,
        payload: &[u8],
        compression: Compression,
        out: &mut Vec<u8>,
    ) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&n.to_be_bytes());

        out.clear();
        out.reserve(SEAL_OVERHEAD + zstd::zstd_safe::compress_bound(payload.len()));
        out.extend_from_slice(self.session.as_bytes());
        out.extend_from_slice(&nonce);
        let level = match compression {
            Compression::Zstd(level) if payload.len() >= 64 && !looks_incompressible(payload) => Some(level),
            _ => None,
        };
        let mut compressed = false;
        if let Some(level) = level {
            out.push(ENCODING_ZSTD);
            // zstd appends into the reserved capacity after the header
            // (a cursor at the end), which needs no zeroing first.
            let start = out.len() as u64;
            let written = COMPRESSOR.with(|c| {
                let mut c = c.borrow_mut();
                if c.as_ref().is_none_or(|(l, _)| *l != level) {
                    *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
                }
                let (_, compressor) = c.as_mut()?;
                let mut tail = std::io::Cursor::new(&mut *out);
                tail.set_position(start);
                compressor.compress_to_buffer(payload, &mut tail).ok()
            });
            // Keep the compressed form only when it saves something.
            compressed = written.is_some_and(|w| w + 16 < payload.len());
            if !compressed {
                out.truncate(HEADER_LEN);
            }
        }
        if !compressed {
            out.push(ENCODING_RAW);
            out.extend_from_slice(payload);
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kind, id)),
                &mut out[HEADER_LEN..],
            )
            .expect("AES-GCM sealing cannot fail for in-memory buffers of this size");
        out.extend_from_slice(tag.as_ref());
    }
}

/// Open a sealed object of `kind` (and blob `id`), returning its payload.
/// `expected_len`, when known from the index, bounds decompression.
pub fn open(
    master: &MasterKey,
    kind: ObjectKind,
    id: Option<&BlobId>,
    sealed: &[u8],
    expected_len: Option<usize>,
) -> Result<Vec<u8>, SealError> {
    let mut buf = sealed.to_vec();
    let mut decompressed = Vec::new();
    match open_payload(master, kind, id, &mut buf, expected_len, &mut decompressed)? {
        Payload::Raw(range) => {
            buf.truncate(range.end);
            buf.drain(..range.start);
            Ok(buf)
        }
        Payload::Decompressed => Ok(decompressed),
    }
}

/// [`open`] without copies, for callers opening many blobs: decrypts
/// `sealed` where it lies (its bytes are lost) and returns the payload,
/// which is part of `sealed` when it was stored raw, or the decompressed
/// bytes in `scratch` (a buffer to reuse; its contents are replaced).
pub fn open_in_place<'a>(
    master: &MasterKey,
    kind: ObjectKind,
    id: Option<&BlobId>,
    sealed: &'a mut [u8],
    expected_len: Option<usize>,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], SealError> {
    match open_payload(master, kind, id, sealed, expected_len, scratch)? {
        Payload::Raw(range) => Ok(&sealed[range]),
        Payload::Decompressed => Ok(scratch),
    }
}

/// Where [`open_payload`] left the payload.
enum Payload {
    /// These bytes of the decrypted object.
    Raw(std::ops::Range<usize>),
    /// The decompression buffer.
    Decompressed,
}

fn open_payload(
    master: &MasterKey,
    kind: ObjectKind,
    id: Option<&BlobId>,
    sealed: &mut [u8],
    expected_len: Option<usize>,
    decompressed: &mut Vec<u8>,
) -> Result<Payload, SealError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(SealError::Truncated);
    }
    let key = session_key(master, &sealed[..SESSION_LEN]);
    let nonce = Nonce::try_assume_unique_for_key(&sealed[SESSION_LEN..HEADER_LEN]).map_err(|_| SealError::Truncated)?;
    let plain = key
        .open_in_place(nonce, Aad::from(aad(kind, id)), &mut sealed[HEADER_LEN..])
        .map_err(|_| SealError::Authentication)?;
    let (&encoding, body) = plain.split_first().ok_or(SealError::Truncated)?;
    match encoding {
        ENCODING_RAW => Ok(Payload::Raw(HEADER_LEN + 1..HEADER_LEN + 1 + body.len())),
        ENCODING_ZSTD => {
            decompress(body, expected_len, decompressed)?;
            Ok(Payload::Decompressed)
        }
        other => Err(SealError::UnknownEncoding(other)),
    }
}

/// Decompress `body` into `out` (its contents replaced; zstd writes into
/// its capacity, which needs no zeroing first).
fn decompress(body: &[u8], expected_len: Option<usize>, out: &mut Vec<u8>) -> Result<(), SealError> {
    let capacity = match expected_len {
        Some(n) => n,
        None => match zstd::zstd_safe::get_frame_content_size(body) {
            Ok(Some(n)) if n <= MAX_PLAINTEXT => n as usize,
            Ok(Some(n)) => return Err(SealError::Decompression(format!("claims {n} bytes"))),
            _ => return Err(SealError::Decompression("no content size in the frame".into())),
        },
    };
    out.clear();
    out.reserve(capacity);
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| SealError::Decompression(e.to_string()))?);
        }
        let decompressor = d.as_mut().expect("just set");
        decompressor.decompress_to_buffer(body, out).map_err(|e| SealError::Decompression(e.to_string()))
    })?;
    // `out` may have had room for more than `capacity`: anything but the
    // expected (or declared) length is damage.
    if out.len() != capacity {
        return Err(SealError::Decompression(format!("{} bytes, expected {}", out.len(), capacity)));
    }
    Ok(())
}

/// A cheap guess whether zstd would waste its time: the byte entropy of three
/// 4 KiB samples. Random and already-compressed data measures ~7.95 bits per
/// byte on such a sample; text and most binaries are far below 7.5.
fn looks_incompressible(data: &[u8]) -> bool {
    const SAMPLE: usize = 4096;
    if data.len() < 4 * SAMPLE {
        return false;
    }
    let starts = [0, data.len() / 2 - SAMPLE / 2, data.len() - SAMPLE];
    starts.iter().all(|&s| entropy_bits(&data[s..s + SAMPLE]) > 7.85)
}

fn entropy_bits(sample: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let n = sample.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_testkit::fixture::noise;
    use proptest::prelude::*;

    fn key() -> MasterKey {
        MasterKey::from_secret([9; 32])
    }

    proptest! {
        #[test]
        fn seal_then_open_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..5000), level in 0i32..4) {
            let key = key();
            let sealer = Sealer::new(&key, SessionId::random());
            let id = key.blob_id(&payload);
            let compression = if level == 0 { Compression::None } else { Compression::Zstd(level) };
            let sealed = sealer.seal(ObjectKind::Data, Some(&id), &payload, compression);
            prop_assert_eq!(open(&key, ObjectKind::Data, Some(&id), &sealed, Some(payload.len())).unwrap(), payload.clone());
            prop_assert_eq!(open(&key, ObjectKind::Data, Some(&id), &sealed, None).unwrap(), payload.clone());
            // In place, with a scratch buffer left over from a larger blob.
            let mut scratch = vec![5u8; 6000];
            let mut in_place = sealed.clone();
            let opened = open_in_place(&key, ObjectKind::Data, Some(&id), &mut in_place, Some(payload.len()), &mut scratch);
            prop_assert_eq!(opened.unwrap(), &payload[..]);
        }

        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open(&key(), ObjectKind::Tree, None, &bytes, None);
        }
    }

    #[test]
    fn text_is_compressed_and_random_data_is_not() {
        let key = key();
        let sealer = Sealer::new(&key, SessionId::random());
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(2000);
        let sealed = sealer.seal(ObjectKind::Data, None, &text, Compression::Zstd(3));
        assert!(sealed.len() < text.len() / 10, "text shrinks: {} -> {}", text.len(), sealed.len());
        let random = noise(1 << 20, 42);
        assert!(looks_incompressible(&random));
        assert!(!looks_incompressible(&text));
        let sealed = sealer.seal(ObjectKind::Data, None, &random, Compression::Zstd(3));
        assert_eq!(sealed.len(), random.len() + SEAL_OVERHEAD, "random data is stored raw");
    }

    #[test]
    fn decompression_yields_exactly_the_declared_length_even_into_a_roomy_buffer() {
        let text = b"first frame ".repeat(100);
        let first = zstd::bulk::compress(&text, 1).unwrap();
        let two = [first.clone(), zstd::bulk::compress(b"second", 1).unwrap()].concat();
        let mut out = Vec::with_capacity(1 << 20);
        assert!(decompress(&two, None, &mut out).is_err(), "a second frame past the declared size");
        assert!(decompress(&two, Some(text.len()), &mut out).is_err(), "more than the index says");
        decompress(&first, None, &mut out).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn nonces_never_repeat_within_a_session_and_sessions_differ() {
        let key = key();
        let a = Sealer::new(&key, SessionId::random());
        let b = Sealer::new(&key, SessionId::random());
        let mut seen = std::collections::HashSet::new();
        for sealer in [&a, &b] {
            for _ in 0..1000 {
                let sealed = sealer.seal(ObjectKind::Data, None, b"x", Compression::None);
                assert!(seen.insert(sealed[..HEADER_LEN].to_vec()), "a (session, nonce) pair repeated");
            }
        }
    }

    #[test]
    fn a_flipped_bit_a_wrong_kind_a_wrong_id_or_a_wrong_key_fail_authentication() {
        let key = key();
        let sealer = Sealer::new(&key, SessionId::random());
        let id = key.blob_id(b"payload");
        let sealed = sealer.seal(ObjectKind::Data, Some(&id), b"payload", Compression::None);
        for i in [0, 17, HEADER_LEN, sealed.len() - 1] {
            let mut damaged = sealed.clone();
            damaged[i] ^= 1;
            assert_eq!(
                open(&key, ObjectKind::Data, Some(&id), &damaged, None),
                Err(SealError::Authentication),
                "byte {i}"
            );
        }
        assert_eq!(open(&key, ObjectKind::Tree, Some(&id), &sealed, None), Err(SealError::Authentication));
        let other = key.blob_id(b"other");
        assert_eq!(open(&key, ObjectKind::Data, Some(&other), &sealed, None), Err(SealError::Authentication));
        let wrong = MasterKey::from_secret([8; 32]);
        assert_eq!(open(&wrong, ObjectKind::Data, Some(&id), &sealed, None), Err(SealError::Authentication));
        assert_eq!(open(&key, ObjectKind::Data, Some(&id), &sealed[..10], None), Err(SealError::Truncated));
        let mut damaged = sealed.clone();
        damaged[HEADER_LEN] ^= 1;
        let mut scratch = Vec::new();
        let opened = open_in_place(&key, ObjectKind::Data, Some(&id), &mut damaged, None, &mut scratch);
        assert_eq!(opened, Err(SealError::Authentication), "in place too");
    }
}
