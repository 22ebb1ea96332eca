//! The framing every engine file shares: a 64-byte header (magic, version, payload length,
//! payload crc32, header crc32) followed by the payload, plus the durable-write helpers (write,
//! fsync, rename, fsync the directory).
//!
//! Layout (little-endian, specified in `docs/format.md`, "engine: file header"):
//!
//! ```text
//! 0   magic        [u8; 8]
//! 8   version      u32
//! 12  header_len   u32   always 64
//! 16  payload_len  u64
//! 24  payload_crc  u32   crc32 (IEEE) of the payload bytes
//! 28  reserved     [u8; 32] zero
//! 60  header_crc   u32   crc32 of bytes 0..60
//! 64  payload
//! ```
//! The payload starts at offset 64 so `f32`/`u64` arrays in it stay aligned in a page-aligned
//! map.

use std::path::Path;

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 64;

/// What a parsed header says.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "kept for readers that migrate old versions")
    )]
    pub version: u32,
    pub payload_crc: u32,
}

/// Builds the header for `payload`.
pub fn header(magic: &[u8; 8], version: u32, payload: &[u8]) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks magic, version window, header crc and length; returns the payload slice. The payload
/// crc is checked only when `verify_payload` (large vector files skip it on open, see
/// `segment.rs`).
pub fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: &[u8; 8],
    oldest: u32,
    newest: u32,
    verify_payload: bool,
) -> Result<(Header, &'a [u8])> {
    if bytes.len() < HEADER_BYTES {
        return Err(Error::corrupt(path, "shorter than its header"));
    }
    if &bytes[0..8] != magic {
        return Err(Error::corrupt(
            path,
            format!("bad magic {:?}, expected {:?}", &bytes[0..8], magic),
        ));
    }
    let expected = u32_at(bytes, 60);
    let actual = crc32fast::hash(&bytes[0..60]);
    if expected != actual {
        return Err(Error::ChecksumMismatch {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    let version = u32_at(bytes, 8);
    if version < oldest || version > newest {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            oldest,
            newest,
        });
    }
    let payload_len = u64::from_le_bytes(
        bytes[16..24]
            .try_into()
            .map_err(|_| Error::corrupt(path, "header length field"))?,
    );
    let payload = bytes
        .get(HEADER_BYTES..)
        .filter(|p| p.len() as u64 == payload_len)
        .ok_or_else(|| Error::corrupt(path, "file length does not match the header"))?;
    let header = Header {
        version,
        payload_crc: u32_at(bytes, 24),
    };
    if verify_payload {
        verify(path, &header, payload)?;
    }
    Ok((header, payload))
}

/// Checks the payload crc.
pub fn verify(path: &Path, header: &Header, payload: &[u8]) -> Result<()> {
    let actual = crc32fast::hash(payload);
    if actual != header.payload_crc {
        return Err(Error::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: header.payload_crc,
            actual,
        });
    }
    Ok(())
}

/// Writes header + payload to a new file and fsyncs it. The caller renames it into place and
/// fsyncs the directory.
pub fn write_new(
    storage: &dyn Storage,
    path: &Path,
    magic: &[u8; 8],
    version: u32,
    payload: &[u8],
) -> Result<()> {
    let mut f = storage.create_new(path).map_err(Error::io(path))?;
    f.write_all(&header(magic, version, payload))
        .map_err(Error::io(path))?;
    f.write_all(payload).map_err(Error::io(path))?;
    f.sync_data().map_err(Error::sync_failed(path))
}

/// Writes `bytes` (a file with its own framing) to a new file and fsyncs it.
pub fn write_raw(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = storage.create_new(path).map_err(Error::io(path))?;
    f.write_all(bytes).map_err(Error::io(path))?;
    f.sync_data().map_err(Error::sync_failed(path))
}

/// Replaces `path` atomically with header + payload: temp file, fsync, rename, fsync dir.
pub fn replace_atomically(
    storage: &dyn Storage,
    path: &Path,
    magic: &[u8; 8],
    version: u32,
    payload: &[u8],
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    match storage.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&tmp)(e)),
    }
    write_new(storage, &tmp, magic, version, payload)?;
    storage.rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(storage, path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so renames and creations in it are durable.
pub fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    crate::storage::sync_dir(storage, dir)
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        replace_atomically(
            &crate::storage::OsStorage,
            &path,
            b"MRTEST01",
            3,
            b"payload",
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (h, p) = parse(&path, &bytes, b"MRTEST01", 1, 3, true).unwrap();
        assert_eq!((h.version, p), (3, &b"payload"[..]));
        assert!(matches!(
            parse(&path, &bytes, b"MRTEST01", 4, 5, true),
            Err(Error::UnsupportedVersion { found: 3, .. })
        ));
        assert!(matches!(
            parse(&path, &bytes, b"MRTEST02", 1, 3, true),
            Err(Error::Corrupt { .. })
        ));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                parse(&path, &bad, b"MRTEST01", 1, 3, true).is_err(),
                "flip at {i}"
            );
        }
        assert!(parse(&path, &bytes[..bytes.len() - 1], b"MRTEST01", 1, 3, true).is_err());
    }
}
