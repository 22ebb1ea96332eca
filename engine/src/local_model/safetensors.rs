//! A reader for the safetensors format: an 8-byte little-endian header length, a JSON header
//! `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then
//! the raw little-endian tensor bytes (offsets are relative to the end of the header).
//!
//! The whole file is read into memory once at open and each tensor is converted to an owned
//! `Vec<f32>` (F32, F16 and BF16 are accepted), so no `unsafe` mapping is needed and the
//! bytes are dropped after loading. Every way the file can be wrong is a [`Error::Model`]
//! that names the file and the tensor.

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest header accepted; real headers are tens of kilobytes. Bounds the JSON parse of a
/// corrupt length field.
const HEADER_BYTES_MAX: u64 = 16 << 20;

/// Element types this reader converts to `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::Bf16),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

/// Where one tensor lives in the data section.
#[derive(Debug, Clone)]
struct Entry {
    /// The dtype string as written, so an unsupported one can be named in the error only when
    /// that tensor is actually asked for (files carry e.g. an I64 `position_ids` we ignore).
    dtype: String,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// A parsed safetensors file held in memory.
#[derive(Debug)]
pub(crate) struct SafeTensors {
    path: PathBuf,
    /// CRC32 of the JSON header: names, dtypes, shapes and offsets of every tensor. Part of a
    /// model's embedder id (a cheap fingerprint that needs no pass over the weights).
    pub(crate) header_crc32: u32,
    entries: HashMap<String, Entry>,
    data: Vec<u8>,
}

impl SafeTensors {
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        Self::parse(path, bytes)
    }

    pub(crate) fn parse(path: &Path, mut bytes: Vec<u8>) -> Result<Self> {
        let bad = |reason: String| Error::model(path, reason);
        let len_bytes: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("shorter than the 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > HEADER_BYTES_MAX || header_len + 8 > bytes.len() as u64 {
            return Err(bad(format!(
                "header length {header_len} does not fit the {} byte file",
                bytes.len()
            )));
        }
        let header_end = 8 + header_len as usize;
        let header_bytes = &bytes[8..header_end];
        let header_crc32 = crc32fast::hash(header_bytes);
        let header: HashMap<String, Value> = serde_json::from_slice(header_bytes)
            .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
        let data_len = bytes.len() - header_end;
        let mut entries = HashMap::new();
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let entry = parse_entry(&info)
                .ok_or_else(|| bad(format!("tensor {name:?} has a malformed header entry")))?;
            if entry.begin > entry.end || entry.end > data_len {
                return Err(bad(format!(
                    "tensor {name:?} spans bytes {}..{} of a {data_len} byte data section",
                    entry.begin, entry.end
                )));
            }
            entries.insert(name, entry);
        }
        bytes.drain(..header_end);
        Ok(Self {
            path: path.to_path_buf(),
            header_crc32,
            entries,
            data: bytes,
        })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of `name`, if present.
    pub(crate) fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Names of every tensor, sorted (for error messages).
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Tensor `name` as `f32`s in row-major order, checked to have exactly `shape`.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let bad = |reason: String| Error::model(&self.path, reason);
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| bad(format!("tensor {name:?} is missing")))?;
        if entry.shape != shape {
            return Err(bad(format!(
                "tensor {name:?} has shape {:?}, expected {shape:?}",
                entry.shape
            )));
        }
        let dtype = Dtype::parse(&entry.dtype).ok_or_else(|| {
            bad(format!(
                "tensor {name:?} has dtype {}, expected F32, F16 or BF16",
                entry.dtype
            ))
        })?;
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor {name:?} shape {shape:?} overflows")))?;
        let raw = &self.data[entry.begin..entry.end];
        if Some(raw.len()) != count.checked_mul(dtype.bytes()) {
            return Err(bad(format!(
                "tensor {name:?} holds {} bytes, but {shape:?} {} needs {}",
                raw.len(),
                entry.dtype,
                count.saturating_mul(dtype.bytes())
            )));
        }
        Ok(match dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::Bf16 => raw
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect(),
        })
    }
}

fn parse_entry(info: &Value) -> Option<Entry> {
    let dtype = info.get("dtype")?.as_str()?.to_owned();
    let shape = info
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()?;
    let offsets = info.get("data_offsets")?.as_array()?;
    let [begin, end] = offsets.as_slice() else {
        return None;
    };
    Some(Entry {
        dtype,
        shape,
        begin: usize::try_from(begin.as_u64()?).ok()?,
        end: usize::try_from(end.as_u64()?).ok()?,
    })
}

/// IEEE 754 binary16 to binary32, exact (every half is representable as a float).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal half: value = mant × 2^-24, normal as a float.
            let value = mant as f32 * f32::from_bits(0x3380_0000);
            return if sign == 0 { value } else { -value };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Writes a safetensors file of F32 tensors (test fixtures).
#[cfg(test)]
pub(crate) fn write_f32(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let begin = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_f32_f16_bf16_and_checks_shape() {
        let bytes = write_f32(&[("a", vec![2, 2], vec![1.0, -2.0, 0.5, 3.0])]);
        let st = SafeTensors::parse(Path::new("m"), bytes).unwrap();
        assert_eq!(st.tensor("a", &[2, 2]).unwrap(), vec![1.0, -2.0, 0.5, 3.0]);
        let err = st.tensor("a", &[4]).unwrap_err().to_string();
        assert!(err.contains("shape [2, 2], expected [4]"), "{err}");
        let err = st.tensor("b", &[1]).unwrap_err().to_string();
        assert!(err.contains("\"b\" is missing"), "{err}");

        // Half floats: 1.0, -2.0, 65504 (max), a subnormal, and BF16 1.5.
        let header = br#"{"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]},"i":{"dtype":"I64","shape":[1],"data_offsets":[10,18]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        for h in [0x3c00u16, 0xc000, 0x7bff, 0x0001, 0x3fc0] {
            bytes.extend(h.to_le_bytes());
        }
        bytes.extend([0u8; 8]);
        let st = SafeTensors::parse(Path::new("m"), bytes).unwrap();
        assert_eq!(
            st.tensor("h", &[4]).unwrap(),
            vec![1.0, -2.0, 65504.0, 2f32.powi(-24)]
        );
        assert_eq!(st.tensor("b", &[1]).unwrap(), vec![1.5]);
        let err = st.tensor("i", &[1]).unwrap_err().to_string();
        assert!(err.contains("dtype I64"), "{err}");
    }

    #[test]
    fn rejects_truncated_and_garbage_files() {
        for bytes in [
            vec![1, 2, 3],
            u64::MAX.to_le_bytes().to_vec(),
            [&5u64.to_le_bytes()[..], b"nope!"].concat(),
        ] {
            let err = SafeTensors::parse(Path::new("x.safetensors"), bytes).unwrap_err();
            assert!(matches!(err, Error::Model { .. }), "{err}");
            assert!(err.to_string().contains("x.safetensors"), "{err}");
        }
        // An entry pointing past the data section.
        let header = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend([0u8; 8]);
        let err = SafeTensors::parse(Path::new("m"), bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("spans bytes 0..16"), "{err}");
    }
}
