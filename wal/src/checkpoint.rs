//! The checkpoint file: the LSN up to which records live elsewhere and need not be replayed.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "MRWALCKP"
//! 8       2     version u16 LE (1)
//! 10      2     reserved, zero
//! 12      8     lsn u64 LE
//! 20      4     crc32(bytes 0..20)
//! ```
//!
//! It is replaced atomically: written to `checkpoint.tmp`, fsynced, renamed over
//! `checkpoint`, directory fsynced. A reader therefore sees the old or the new file, never a
//! mix, and a checksum failure here is real corruption.

use std::fs;
use std::io;
use std::path::Path;

use crate::Lsn;
use crate::error::WalError;
use crate::file::Storage;

/// Identifies a checkpoint file.
pub(crate) const CHECKPOINT_MAGIC: [u8; 8] = *b"MRWALCKP";
/// Oldest checkpoint format version this build reads.
pub(crate) const CHECKPOINT_VERSION_OLDEST: u16 = 1;
/// Checkpoint format version this build writes (and the newest it reads).
pub(crate) const CHECKPOINT_VERSION_NEWEST: u16 = 1;
/// Size of the checkpoint file.
pub(crate) const CHECKPOINT_BYTES: usize = 24;
/// File name of the checkpoint.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
/// Temporary name used while replacing it.
pub(crate) const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";

/// Encodes a checkpoint naming `lsn`.
pub(crate) fn encode(lsn: Lsn) -> [u8; CHECKPOINT_BYTES] {
    let mut out = [0u8; CHECKPOINT_BYTES];
    out[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
    out[8..10].copy_from_slice(&CHECKPOINT_VERSION_NEWEST.to_le_bytes());
    out[12..20].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32fast::hash(&out[..20]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and checks a checkpoint file's bytes: magic, version, size, checksum.
pub(crate) fn decode(bytes: &[u8], file: &Path) -> Result<Lsn, WalError> {
    let magic_len = bytes.len().min(CHECKPOINT_MAGIC.len());
    if bytes.len() < CHECKPOINT_MAGIC.len() || bytes[..magic_len] != CHECKPOINT_MAGIC {
        return Err(WalError::BadMagic {
            file: file.to_path_buf(),
            found: bytes[..magic_len].to_vec(),
        });
    }
    if bytes.len() >= 10 {
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if !(CHECKPOINT_VERSION_OLDEST..=CHECKPOINT_VERSION_NEWEST).contains(&version) {
            return Err(WalError::UnsupportedVersion {
                file: file.to_path_buf(),
                found: version,
                oldest: CHECKPOINT_VERSION_OLDEST,
                newest: CHECKPOINT_VERSION_NEWEST,
            });
        }
    }
    if bytes.len() != CHECKPOINT_BYTES {
        return Err(WalError::Corrupt {
            file: file.to_path_buf(),
            offset: 0,
            detail: "checkpoint file has the wrong size",
        });
    }
    let expected = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    let actual = crc32fast::hash(&bytes[..20]);
    if expected != actual {
        return Err(WalError::ChecksumMismatch {
            file: file.to_path_buf(),
            offset: 0,
            expected,
            actual,
        });
    }
    if bytes[10] != 0 || bytes[11] != 0 {
        return Err(WalError::Corrupt {
            file: file.to_path_buf(),
            offset: 10,
            detail: "checkpoint sets reserved bits",
        });
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[12..20]);
    Ok(u64::from_le_bytes(lsn))
}

/// Reads the checkpoint of `dir`; 0 if there is none yet.
pub(crate) fn read(dir: &Path) -> Result<Lsn, WalError> {
    let path = dir.join(CHECKPOINT_FILE);
    match fs::read(&path) {
        Ok(bytes) => decode(&bytes, &path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(WalError::io("read", path, e)),
    }
}

/// Durably replaces the checkpoint of `dir` with `lsn`.
pub(crate) fn write(storage: &dyn Storage, dir: &Path, lsn: Lsn) -> Result<(), WalError> {
    let tmp = dir.join(CHECKPOINT_TMP_FILE);
    let path = dir.join(CHECKPOINT_FILE);
    crate::file::create_durably(storage, &tmp, &path, &encode(lsn)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_bit_flip_is_an_error() {
        let file = Path::new("checkpoint");
        let bytes = encode(0x0102_0304_0506_0708);
        assert_eq!(decode(&bytes, file).ok(), Some(0x0102_0304_0506_0708));
        for bit in 0..CHECKPOINT_BYTES * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad, file).is_err(), "bit {bit}");
        }
        for cut in 0..CHECKPOINT_BYTES {
            assert!(decode(&bytes[..cut], file).is_err(), "cut {cut}");
        }
    }
}
