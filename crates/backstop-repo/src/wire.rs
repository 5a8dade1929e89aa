//! The primitive encodings of `docs/format.md`: LEB128 varints, zig-zag signed
//! varints and length-prefixed bytes, with a reader that never panics and
//! never allocates more than the input can justify.

use crate::id::BlobId;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_svarint(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) type DecodeResult<T> = Result<T, DecodeError>;

pub(crate) fn bad<T>(msg: impl Into<String>) -> DecodeResult<T> {
    Err(DecodeError(msg.into()))
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn u8(&mut self) -> DecodeResult<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| DecodeError("unexpected end of data".into()))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn varint(&mut self) -> DecodeResult<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = (b & 0x7f) as u64;
            if shift == 63 && part > 1 {
                return bad("varint overflows 64 bits");
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return bad("varint is not in its shortest form");
                }
                return Ok(v);
            }
        }
        bad("varint longer than 10 bytes")
    }

    pub fn svarint(&mut self) -> DecodeResult<i64> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count of items that each take at least `min_item_len` bytes; checked
    /// against what is left so a forged count cannot trigger a huge allocation.
    pub fn count(&mut self, min_item_len: usize) -> DecodeResult<usize> {
        let n = self.varint()?;
        if n.saturating_mul(min_item_len.max(1) as u64) > self.remaining() as u64 {
            return bad(format!("count {n} exceeds the remaining data"));
        }
        Ok(n as usize)
    }

    pub fn u32_varint(&mut self) -> DecodeResult<u32> {
        u32::try_from(self.varint()?).or_else(|_| bad("value does not fit 32 bits"))
    }

    pub fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if n > self.remaining() {
            return bad("unexpected end of data");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn bytes(&mut self) -> DecodeResult<&'a [u8]> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return bad("length exceeds the remaining data");
        }
        self.take(n as usize)
    }

    pub fn id32(&mut self) -> DecodeResult<[u8; 32]> {
        Ok(self.take(32)?.try_into().expect("take returned 32 bytes"))
    }

    pub fn blob_id(&mut self) -> DecodeResult<BlobId> {
        Ok(BlobId(self.id32()?))
    }

    pub fn finish(&self) -> DecodeResult<()> {
        if self.remaining() != 0 {
            return bad(format!("{} unexpected trailing bytes", self.remaining()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<u64>(), s in any::<i64>(), b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            put_svarint(&mut out, s);
            put_bytes(&mut out, &b);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.svarint().unwrap(), s);
            prop_assert_eq!(r.bytes().unwrap(), &b[..]);
            r.finish().unwrap();
        }

        #[test]
        fn the_reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&data);
            let _ = r.varint();
            let _ = r.bytes();
            let _ = r.count(10);
            let _ = r.svarint();
            let _ = r.id32();
        }
    }

    #[test]
    fn overlong_and_overflowing_varints_are_rejected() {
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(Reader::new(&[0xe8, 0x00]).varint().is_err(), "104 padded to two bytes");
        assert_eq!(Reader::new(&[0xe8, 0x01]).varint().unwrap(), 232);
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).varint().is_err());
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).varint().unwrap(),
            u64::MAX
        );
    }

    #[test]
    fn forged_counts_do_not_allocate() {
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX / 2);
        assert!(Reader::new(&out).count(1).is_err());
    }
}
