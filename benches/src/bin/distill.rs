//! Distils a BERT sentence-transformer into a model2vec-layout static model, so the static
//! path of `engine::LocalModelEmbedder` can be measured on real data without downloading a
//! model2vec model (none is reachable from here).
//!
//! `cargo run -p benches --release --bin distill -- target/models/all-MiniLM-L6-v2 target/models/minilm-static`
//!
//! Each vocabulary piece's row is the BERT embedding of the piece's text (`##` stripped: the
//! embedder takes text, not ids, so a continuation piece is embedded as the word-initial
//! piece of the same letters), unit-normalised. Unlike model2vec's own distillation there is
//! no PCA and no Zipf re-weighting, so this is a floor for what a real model2vec model would
//! score (subtracting the mean row, PCA's centring, was tried: LoCoMo R@10 of the vault
//! 0.713 → 0.702, so it is not done). Writes
//! `model.safetensors` (one F32 `embeddings` tensor `[vocab, dim]`), a copy of
//! `tokenizer.json` and a `config.json` saying what it is.

use anyhow::{Context, Result, bail};
use engine::{Embedder, LocalModelEmbedder};
use std::path::PathBuf;
use std::time::Instant;

/// Pieces embedded per `embed_batch` call (each is `[CLS]`, a few pieces, `[SEP]`).
const PIECES_PER_CALL: usize = 512;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [from, to] = args.as_slice() else {
        bail!("usage: distill <bert model dir> <output dir>");
    };
    let model = LocalModelEmbedder::open(from).with_context(|| format!("loading {from:?}"))?;
    let tokenizer_bytes = std::fs::read(from.join("tokenizer.json"))?;
    let tokenizer: serde_json::Value = serde_json::from_slice(&tokenizer_bytes)?;
    let vocab = tokenizer["model"]["vocab"]
        .as_object()
        .context("tokenizer.json has no model.vocab")?;
    let mut pieces = vec![String::new(); vocab.len()];
    for (piece, id) in vocab {
        let id = id.as_u64().context("non-integer vocab id")? as usize;
        let slot = pieces.get_mut(id).context("vocab ids are not 0..len")?;
        *slot = piece.strip_prefix("##").unwrap_or(piece).to_owned();
    }
    let dim = model.dim();
    let start = Instant::now();
    let mut data: Vec<u8> = Vec::with_capacity(pieces.len() * dim * 4);
    for chunk in pieces.chunks(PIECES_PER_CALL) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for v in model.vectors(&texts) {
            data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    eprintln!(
        "embedded {} pieces in {:.1} s",
        pieces.len(),
        start.elapsed().as_secs_f64()
    );
    let header = serde_json::json!({
        "embeddings": {"dtype": "F32", "shape": [pieces.len(), dim], "data_offsets": [0, data.len()]}
    });
    let header = serde_json::to_vec(&header)?;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    std::fs::create_dir_all(to)?;
    std::fs::write(to.join("model.safetensors"), file)?;
    std::fs::write(to.join("tokenizer.json"), tokenizer_bytes)?;
    let config = serde_json::json!({
        "model_type": "model2vec",
        "normalize": true,
        "distilled_from": model.id(),
        "method": "benches/src/bin/distill.rs: piece text through the BERT model, no PCA",
    });
    std::fs::write(to.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}
