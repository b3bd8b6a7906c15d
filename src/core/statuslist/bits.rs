//! The Status List itself (draft-ietf-oauth-status-list, "Status List"): `bits` bits per
//! token, token `i` at byte `i * bits / 8`, bit offset `(i * bits) % 8`, least significant
//! bits first; served as `lst`, the bytes compressed with DEFLATE in the ZLIB format at the
//! highest level and written as base64url without padding.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use std::io::{Read as _, Write as _};

/// A status list's entries, packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    bits: u8,
    bytes: Vec<u8>,
}

impl Packed {
    /// `size` entries of `bits` bits (1, 2, 4 or 8), all 0 (VALID). `size * bits` is rounded
    /// up to whole bytes.
    pub fn new(bits: u8, size: u32) -> Self {
        debug_assert!(matches!(bits, 1 | 2 | 4 | 8));
        let len = (u64::from(size) * u64::from(bits)).div_ceil(8);
        Packed {
            bits,
            bytes: vec![0; usize::try_from(len).unwrap_or(0)],
        }
    }

    /// Bits per entry.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// How many entries the bytes hold.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64 * 8 / u64::from(self.bits)
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The packed bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Entry `idx`; None past the end (a token whose index is out of range is invalid).
    pub fn get(&self, idx: u64) -> Option<u8> {
        let (byte, shift, mask) = self.position(idx)?;
        Some((self.bytes[byte] >> shift) & mask)
    }

    /// Sets entry `idx` to `value` (its low `bits` bits); false past the end.
    pub fn set(&mut self, idx: u64, value: u8) -> bool {
        let Some((byte, shift, mask)) = self.position(idx) else {
            return false;
        };
        let b = &mut self.bytes[byte];
        *b = (*b & !(mask << shift)) | ((value & mask) << shift);
        true
    }

    fn position(&self, idx: u64) -> Option<(usize, u32, u8)> {
        let bit = idx.checked_mul(u64::from(self.bits))?;
        let byte = usize::try_from(bit / 8).ok()?;
        if byte >= self.bytes.len() {
            return None;
        }
        let mask = u8::MAX >> (8 - self.bits);
        Some((byte, (bit % 8) as u32, mask))
    }

    /// `lst`: the bytes, zlib-compressed at level 9, base64url without padding.
    pub fn encode(&self) -> String {
        let mut z = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(self.bytes.len() / 64 + 64),
            flate2::Compression::best(),
        );
        // Writing to a Vec cannot fail.
        let _ = z.write_all(&self.bytes);
        let compressed = z.finish().unwrap_or_default();
        B64.encode(compressed)
    }

    /// Reads `lst` with `bits` per entry, refusing one that inflates to more than
    /// `max_bytes` (a small body must not expand into gigabytes).
    pub fn decode(bits: u8, lst: &str, max_bytes: usize) -> Result<Self, String> {
        if !matches!(bits, 1 | 2 | 4 | 8) {
            return Err(format!("bits is {bits}, not 1, 2, 4 or 8"));
        }
        let compressed = B64
            .decode(lst)
            .map_err(|_| "lst is not base64url without padding".to_owned())?;
        let mut bytes = Vec::new();
        flate2::read::ZlibDecoder::new(compressed.as_slice())
            .take(max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("lst is not zlib data: {e}"))?;
        if bytes.len() > max_bytes {
            return Err(format!("lst holds more than {max_bytes} bytes"));
        }
        Ok(Packed { bits, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::Packed;
    use serde::Deserialize;

    /// The draft's test vectors ("Test vectors for Status List encoding" and the examples
    /// of "Status List in JSON Format"), as `vectors.json` holds them.
    #[derive(Deserialize)]
    struct Vectors {
        small: Vec<Small>,
        long: Vec<Long>,
    }

    #[derive(Deserialize)]
    struct Small {
        bits: u8,
        bytes: String,
        lst: String,
        statuses: Vec<u8>,
    }

    #[derive(Deserialize)]
    struct Long {
        bits: u8,
        size: u32,
        statuses: Vec<(u64, u8)>,
        lst: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("vectors.json")).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_drafts_short_examples_pack_and_compress_as_written() {
        for v in vectors().small {
            let mut p = Packed::new(v.bits, v.statuses.len() as u32);
            for (i, s) in v.statuses.iter().enumerate() {
                assert!(p.set(i as u64, *s));
            }
            assert_eq!(hex(p.bytes()), v.bytes, "{} bits", v.bits);
            // Level 9 over these bytes is the draft's own `lst`, byte for byte.
            assert_eq!(p.encode(), v.lst, "{} bits", v.bits);
            let back = Packed::decode(v.bits, &v.lst, 1024).unwrap();
            assert_eq!(back, p);
        }
    }

    /// For 1, 2, 4 and 8 bits: the draft's `lst` decodes to exactly its statuses (every
    /// other entry VALID), and ours for the same statuses decodes to the same bytes.
    #[test]
    fn the_drafts_vectors_for_each_width_decode_to_their_statuses() {
        let long = vectors().long;
        assert_eq!(
            long.iter().map(|v| v.bits).collect::<Vec<_>>(),
            [1, 2, 4, 8]
        );
        for v in long {
            let max = (v.size as usize * v.bits as usize) / 8;
            let theirs = Packed::decode(v.bits, &v.lst, max).unwrap();
            let mut ours = Packed::new(v.bits, v.size);
            for &(i, s) in &v.statuses {
                ours.set(i, s);
            }
            assert_eq!(theirs.len(), u64::from(v.size), "{} bits", v.bits);
            assert_eq!(theirs, ours, "{} bits", v.bits);
            for &(i, s) in &v.statuses {
                assert_eq!(theirs.get(i), Some(s), "{} bits, index {i}", v.bits);
            }
            let set = (0..theirs.len())
                .filter(|&i| theirs.get(i) != Some(0))
                .count();
            let nonzero = v.statuses.iter().filter(|(_, s)| *s != 0).count();
            assert_eq!(set, nonzero, "{} bits", v.bits);
            assert_eq!(Packed::decode(v.bits, &ours.encode(), max).unwrap(), ours);
        }
    }

    #[test]
    fn entries_past_the_end_and_oversized_lists_are_refused() {
        let mut p = Packed::new(2, 16);
        assert_eq!(p.len(), 16);
        assert_eq!(p.get(16), None);
        assert!(!p.set(16, 1));
        assert!(!p.set(u64::MAX, 1));
        assert!(p.set(15, 0b111));
        assert_eq!(p.get(15), Some(0b11), "only the low bits are kept");
        assert_eq!(p.get(14), Some(0));
        let big = Packed::new(8, 1 << 20).encode();
        assert!(big.len() < 2000, "zeros compress: {}", big.len());
        let err = Packed::decode(8, &big, 1 << 19).unwrap_err();
        assert!(err.contains("more than"), "{err}");
        assert!(Packed::decode(3, &big, 1 << 20).is_err());
        assert!(Packed::decode(8, "not base64!", 1 << 20).is_err());
        assert!(Packed::decode(8, "AAAA", 1 << 20).is_err());
    }
}
