//! Edit scripts: how a fuzz input damages a valid file. Starting from a real file and applying
//! the fuzzer's edits (instead of taking the whole file from the input) means the empty input
//! is the undamaged file, so every run starts deep in the parsers without a seed corpus, and
//! a crash reproduces from the input alone as long as the template is deterministic.

/// Longest run of bytes one insert op adds.
const INSERT_BYTES_MAX: usize = 64;
/// Most ops one script applies, so a long input cannot turn into a slow one.
const OPS_MAX: usize = 64;

/// Reads little-endian integers off the front of the fuzz input; `None` once it runs out.
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

/// Applies the edit script in `script` to `bytes`. Each op is an opcode byte and its
/// arguments; offsets are taken modulo the current length, so every op lands somewhere.
/// Ops: flip bits of a byte, overwrite a u32 or a u64 (counts, offsets, ids), truncate,
/// insert bytes, remove a range, copy a range over another place.
pub fn apply(script: &[u8], bytes: &mut Vec<u8>) {
    let mut c = Cursor::new(script);
    for _ in 0..OPS_MAX {
        let Some(op) = c.u8() else { return };
        let Some(at) = c.u32().map(|a| a as usize) else {
            return;
        };
        let len = bytes.len();
        let at_in = |width: usize| (len >= width).then(|| at % (len - width + 1));
        match op % 7 {
            0 => {
                let Some(mask) = c.u8() else { return };
                if let Some(i) = at_in(1) {
                    bytes[i] ^= mask;
                }
            }
            1 => {
                let Some(v) = c.u32() else { return };
                if let Some(i) = at_in(4) {
                    bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            2 => {
                let Some(v) = c.u64() else { return };
                if let Some(i) = at_in(8) {
                    bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            3 => bytes.truncate(at % (len + 1)),
            4 => {
                let Some(n) = c.u8() else { return };
                let Some(insert) = c.take(usize::from(n) % (INSERT_BYTES_MAX + 1)) else {
                    return;
                };
                let i = at % (len + 1);
                bytes.splice(i..i, insert.iter().copied());
            }
            5 => {
                let Some(n) = c.u16() else { return };
                let i = at % (len + 1);
                let end = i.saturating_add(usize::from(n)).min(len);
                bytes.drain(i..end);
            }
            _ => {
                let (Some(to), Some(n)) = (c.u32(), c.u16()) else {
                    return;
                };
                let n = usize::from(n).min(len);
                if let (Some(from), Some(to)) =
                    (at_in(n), (len >= n).then(|| to as usize % (len - n + 1)))
                {
                    bytes.copy_within(from..from + n, to);
                }
            }
        }
    }
}

/// Bytes of the common engine file header (`engine/src/file.rs`, `docs/format.md`).
pub const HEADER_BYTES: usize = 64;

/// Makes an engine file's header agree with its (damaged) payload again: payload length,
/// payload crc and header crc. What is left for the reader is a file whose framing is
/// intact and whose content lies — the case checksums cannot catch (a bug that wrote bad
/// data, or an operator who "repaired" a file).
pub fn reseal_header(bytes: &mut [u8]) {
    if bytes.len() < HEADER_BYTES {
        return;
    }
    let payload_len = (bytes.len() - HEADER_BYTES) as u64;
    bytes[16..24].copy_from_slice(&payload_len.to_le_bytes());
    let payload_crc = crc32fast::hash(&bytes[HEADER_BYTES..]);
    bytes[24..28].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&header_crc.to_le_bytes());
}

/// Builds a whole engine file around `payload` (magic, version 1.., lengths, crcs).
pub fn framed(magic: &[u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_BYTES];
    out[0..8].copy_from_slice(magic);
    out[8..12].copy_from_slice(&version.to_le_bytes());
    out[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
    out.extend_from_slice(payload);
    reseal_header(&mut out);
    out
}

/// Recomputes the crc32 footer of a lexical index (`lexical.bin` carries its own framing).
pub fn reseal_footer(bytes: &mut [u8]) {
    if bytes.len() < 4 {
        return;
    }
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_edit_and_never_panic() {
        let mut b = vec![0u8; 16];
        apply(&[0, 3, 0, 0, 0, 0xff], &mut b);
        assert_eq!(b[3], 0xff);
        apply(&[3, 5, 0, 0, 0], &mut b);
        assert_eq!(b.len(), 5);
        for seed in 0u8..=255 {
            let script: Vec<u8> = (0..200u32)
                .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
                .collect();
            let mut b = vec![1u8; 40];
            apply(&script, &mut b);
            let mut empty = Vec::new();
            apply(&script, &mut empty);
        }
    }
}
