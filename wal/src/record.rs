//! Record frames: the unit written to a segment after its header.
//!
//! ```text
//! offset  size  field
//! 0       4     payload_len   u32 LE
//! 4       1     kind          caller-defined
//! 5       1     flags         bit 0 = END_OF_BATCH, other bits must be 0
//! 6       4     header_crc    crc32(seed; bytes 0..6)
//! 10      len   payload
//! 10+len  4     frame_crc     crc32(seed; bytes 0..10+len)
//! ```
//!
//! The separate `header_crc` lets recovery trust `payload_len` before reading the payload,
//! and lets it probe cheaply for further valid frames after a damaged one (the test that tells
//! a torn tail from corruption in the middle of the log). Both checksums start from the
//! segment's random seed, so a frame copied from another segment never validates.

use crate::RECORD_BYTES_LIMIT;

/// Bytes before the payload.
pub(crate) const FRAME_HEADER_BYTES: usize = 10;
/// Bytes after the payload.
pub(crate) const FRAME_TRAILER_BYTES: usize = 4;
/// Framing overhead per record.
pub(crate) const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + FRAME_TRAILER_BYTES;
/// Set on the last record of every `append`/`append_batch` call: recovery keeps a batch only
/// if its last record (and therefore all of it) is intact.
pub(crate) const FLAG_END_OF_BATCH: u8 = 0b0000_0001;
const FLAGS_KNOWN: u8 = FLAG_END_OF_BATCH;

/// A frame that decoded and checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Total bytes this frame occupies on disk.
    pub(crate) fn encoded_len(&self) -> usize {
        self.payload.len() + FRAME_OVERHEAD_BYTES
    }
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes remain than the frame needs.
    Truncated,
    /// `header_crc` does not match.
    HeaderChecksum { expected: u32, actual: u32 },
    /// The header is intact but claims a payload larger than any writer may produce.
    TooLong,
    /// The header is intact but sets flag bits this version does not know.
    UnknownFlags,
    /// `frame_crc` does not match.
    Checksum { expected: u32, actual: u32 },
}

fn crc(seed: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(seed);
    hasher.update(bytes);
    hasher.finalize()
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Appends one frame to `out`. The caller has checked `payload.len() <= RECORD_BYTES_LIMIT`.
pub(crate) fn encode(out: &mut Vec<u8>, seed: u32, kind: u8, flags: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= RECORD_BYTES_LIMIT as usize);
    let start = out.len();
    // The cast cannot truncate: payloads were checked against RECORD_BYTES_LIMIT (< u32::MAX).
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.push(flags);
    let header_crc = crc(seed, &out[start..start + 6]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    let frame_crc = crc(seed, &out[start..]);
    out.extend_from_slice(&frame_crc.to_le_bytes());
}

/// Decodes the frame at the start of `bytes`, checking both checksums.
pub(crate) fn decode(bytes: &[u8], seed: u32) -> Result<Frame<'_>, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Truncated);
    }
    let expected = read_u32(bytes, 6);
    let actual = crc(seed, &bytes[..6]);
    if expected != actual {
        return Err(FrameError::HeaderChecksum { expected, actual });
    }
    let len = read_u32(bytes, 0);
    let (kind, flags) = (bytes[4], bytes[5]);
    if len > RECORD_BYTES_LIMIT {
        return Err(FrameError::TooLong);
    }
    if flags & !FLAGS_KNOWN != 0 {
        return Err(FrameError::UnknownFlags);
    }
    let payload_end = FRAME_HEADER_BYTES + len as usize;
    if bytes.len() < payload_end + FRAME_TRAILER_BYTES {
        return Err(FrameError::Truncated);
    }
    let expected = read_u32(bytes, payload_end);
    let actual = crc(seed, &bytes[..payload_end]);
    if expected != actual {
        return Err(FrameError::Checksum { expected, actual });
    }
    Ok(Frame {
        kind,
        flags,
        payload: &bytes[FRAME_HEADER_BYTES..payload_end],
    })
}

/// True if a valid frame starts at any offset in `bytes`. Recovery calls this after a bad frame:
/// intact data after the damage means the damage is not a torn tail.
pub(crate) fn any_valid_frame(bytes: &[u8], seed: u32) -> bool {
    (0..bytes.len()).any(|at| decode(&bytes[at..], seed).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_including_empty_payload() {
        for payload in [&b""[..], b"x", &[7u8; 300][..]] {
            let mut buf = Vec::new();
            encode(&mut buf, 42, 9, FLAG_END_OF_BATCH, payload);
            assert_eq!(buf.len(), payload.len() + FRAME_OVERHEAD_BYTES);
            let frame = decode(&buf, 42).expect("valid frame");
            assert_eq!(frame.payload, payload);
            assert_eq!((frame.kind, frame.flags), (9, FLAG_END_OF_BATCH));
            assert_eq!(frame.encoded_len(), buf.len());
        }
    }

    #[test]
    fn another_seed_never_validates() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 0, 0, b"payload");
        assert!(matches!(
            decode(&buf, 2),
            Err(FrameError::HeaderChecksum { .. })
        ));
    }

    #[test]
    fn every_prefix_is_truncated_and_every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 3, FLAG_END_OF_BATCH, b"hello wal");
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut], 7).is_err(), "prefix {cut} decoded");
        }
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad, 7).is_err(), "flip of bit {bit} undetected");
        }
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 3, 0b10, b"x");
        assert_eq!(decode(&buf, 7), Err(FrameError::UnknownFlags));
    }
}
