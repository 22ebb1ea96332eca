#!/usr/bin/env python3
"""Tiny Hugging Face model directories and their reference vectors, for the engine test
`hf_directories_match_the_python_reference` (engine/src/local_model/tests.rs).

Real e5 / bge weights cannot be fetched offline, so this writes two small random models in
exactly the layout `memoryrouter models fetch` downloads (config.json, tokenizer.json,
model.safetensors, sentence-transformers' modules.json / 1_Pooling/config.json /
config_sentence_transformers.json):

- `xlmr-e5/`: an XLM-RoBERTa encoder (positions from pad_token_id + 1) with a SentencePiece
  **Unigram** tokenizer trained here by `sentencepiece` with its real `nmt_nfkc` rules, so
  tokenizer.json carries a genuine `Precompiled` charsmap; mean pooling; e5's
  `query: ` / `passage: ` prompts. Weights in F32 and F16.
- `bert-bge/`: a BERT encoder with a WordPiece tokenizer, **CLS** pooling and a query
  instruction, as bge-small-en-v1.5.

The reference is independent of the Rust code: token ids come from the `tokenizers` package
(Hugging Face's own implementation), the forward pass is numpy in float64.

    pip install tokenizers sentencepiece protobuf numpy
    python3 benches/scripts/hf_tiny_models.py OUT_DIR

writes OUT_DIR/{xlmr-e5,bert-bge}/ and OUT_DIR/reference.json.
"""
import io
import json
import math
import os
import struct
import sys

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

CORPUS = [
    "Caroline went to a LGBTQ support group yesterday and it was powerful.",
    "Melanie painted a sunrise over the lake last year; the kids loved it.",
    "When did Caroline go to the support group? Last Friday, two weeks ago.",
    "Café naïve résumé ÉCOLE, déjà vu, über straße, ﬁnance ﬂow.",
    "Ｆｕｌｌ－ｗｉｄｔｈ ｔｅｘｔ and ① ② ③ numbers, ½ and ™.",
    "Привет, как дела? Всё хорошо, спасибо.",
    "مرحبا بك، آپ کیسے ہیں؟",
    "東京タワーに行った。とても高かった。",
    "เขาไม่ได้พูดสักคำ",
    "ड़ी दुख नमस्ते",
    "emoji 😀 and 👩‍👩‍👧 family, flags 🇵🇹",
]
# Texts whose ids and vectors must match: accents (composed and combining), ligatures,
# full-width forms, control and zero-width characters, runs of spaces, tabs, scripts with
# combining marks (the grapheme rule of the Precompiled normaliser), unknown characters.
TEXTS = [
    "When did Caroline go to the LGBTQ support group?",
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301 and Café naïve résumé",
    "ﬁnance ﬂow Ｆｕｌｌ－ｗｉｄｔｈ ①②③ ½ ™ 𝔾𝕠",
    "  leading,   runs   of\tspaces\nand\u200b zero\u00adwidth\u0007 bell  ",
    "เขาไม่ได้พูดสักคำ ड़ी दुख \u0627\u0653\u067e",
    "Привет 東京タワー emoji 😀 👩‍👩‍👧 🇵🇹 ✓✓ zzqx",
    "",
    "the support group " * 60,
]
# Both tokenizers truncate here, as sentence-transformers does (the last text reaches it).
MAX_TOKENS = 128


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def random_weights(rng, cfg, vocab):
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    t = {}

    def mat(name, shape, scale=0.2):
        t[name] = rng.normal(0.0, scale, shape)

    mat("embeddings.word_embeddings.weight", (vocab, h), 0.5)
    mat("embeddings.position_embeddings.weight", (cfg["max_position_embeddings"], h), 0.3)
    mat("embeddings.token_type_embeddings.weight", (cfg["type_vocab_size"], h), 0.3)
    t["embeddings.LayerNorm.weight"] = 1.0 + rng.normal(0, 0.1, h)
    t["embeddings.LayerNorm.bias"] = rng.normal(0, 0.1, h)
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        for name, shape in [
            ("attention.self.query", (h, h)),
            ("attention.self.key", (h, h)),
            ("attention.self.value", (h, h)),
            ("attention.output.dense", (h, h)),
            ("intermediate.dense", (i, h)),
            ("output.dense", (h, i)),
        ]:
            mat(p + name + ".weight", shape)
            mat(p + name + ".bias", shape[:1], 0.05)
        for name in ["attention.output.LayerNorm", "output.LayerNorm"]:
            t[p + name + ".weight"] = 1.0 + rng.normal(0, 0.1, h)
            t[p + name + ".bias"] = rng.normal(0, 0.1, h)
    return t


def write_safetensors(path, tensors, f16_names=()):
    header, blobs, at = {}, [], 0
    for name in sorted(tensors):
        f16 = name in f16_names
        arr = tensors[name].astype("<f2" if f16 else "<f4")
        raw = arr.tobytes()
        header[name] = {
            "dtype": "F16" if f16 else "F32",
            "shape": list(arr.shape),
            "data_offsets": [at, at + len(raw)],
        }
        blobs.append(raw)
        at += len(raw)
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in blobs:
            f.write(raw)
    # What the model computes with: F16 tensors as their rounded values.
    return {
        n: tensors[n].astype(np.float16).astype(np.float64) if n in f16_names else tensors[n].astype(np.float32).astype(np.float64)
        for n in tensors
    }


def forward(t, cfg, ids, position_offset, pooling):
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    d = h // heads
    eps = cfg["layer_norm_eps"]
    n = len(ids)
    x = (
        t["embeddings.word_embeddings.weight"][ids]
        + t["embeddings.position_embeddings.weight"][position_offset : position_offset + n]
        + t["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        lin = lambda name, v: v @ t[p + name + ".weight"].T + t[p + name + ".bias"]
        q = lin("attention.self.query", x).reshape(n, heads, d).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, heads, d).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, h)
        x = layer_norm(
            x + lin("attention.output.dense", ctx),
            t[p + "attention.output.LayerNorm.weight"],
            t[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        inner = gelu(lin("intermediate.dense", x))
        x = layer_norm(
            x + lin("output.dense", inner),
            t[p + "output.LayerNorm.weight"],
            t[p + "output.LayerNorm.bias"],
            eps,
        )
    pooled = x[0] if pooling == "cls" else x.mean(0)
    return (pooled / np.linalg.norm(pooled)).tolist()


def sentence_transformer_files(out, pooling, prompts):
    os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
    with open(os.path.join(out, "modules.json"), "w") as f:
        json.dump(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ],
            f,
        )
    with open(os.path.join(out, "1_Pooling", "config.json"), "w") as f:
        json.dump(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            f,
        )
    with open(os.path.join(out, "config_sentence_transformers.json"), "w") as f:
        json.dump({"prompts": prompts, "default_prompt_name": None}, f)


def xlmr_e5(out, rng):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_writer=model,
        vocab_size=180,
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        character_coverage=0.98,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    charsmap = proto.normalizer_spec.precompiled_charsmap
    assert len(charsmap) > 1000, "sentencepiece gave no compiled nmt_nfkc rules"
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.enable_truncation(MAX_TOKENS)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "hidden_act": "gelu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": MAX_TOKENS + 2,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "layer_norm_eps": 1e-5,
        "vocab_size": len(vocab),
        "position_embedding_type": "absolute",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    prompts = {"query": "query: ", "passage": "passage: "}
    sentence_transformer_files(out, "mean", prompts)
    t = random_weights(rng, cfg, len(vocab))
    # Half the layers' matrices in F16, the way some checkpoints ship.
    f16 = {n for n in t if n.startswith("encoder.layer.1.") and n.endswith(".weight")}
    t = write_safetensors(os.path.join(out, "model.safetensors"), t, f16)
    return tok, cfg, t, prompts, 2, "mean"


def bert_bge(out, rng):
    words = sorted({w.lower().strip(".,?;!") for text in CORPUS[:5] for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,?;!'-"))
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [w for w in words if w and w not in vocab]
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.enable_truncation(MAX_TOKENS)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": MAX_TOKENS,
        "type_vocab_size": 2,
        "pad_token_id": 0,
        "layer_norm_eps": 1e-12,
        "vocab_size": len(vocab),
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    prompts = {"query": "Represent this sentence for searching relevant passages: "}
    sentence_transformer_files(out, "cls", prompts)
    t = write_safetensors(os.path.join(out, "model.safetensors"), random_weights(rng, cfg, len(vocab)))
    return tok, cfg, t, prompts, 0, "cls"


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(13)
    reference = {}
    for name, build in [("xlmr-e5", xlmr_e5), ("bert-bge", bert_bge)]:
        tok, cfg, t, prompts, offset, pooling = build(os.path.join(out, name), rng)
        cases = []
        for text in TEXTS:
            for query in (True, False):
                prompt = prompts.get("query" if query else "passage", "")
                ids = tok.encode(prompt + text).ids
                cases.append(
                    {
                        "text": text,
                        "query": query,
                        "ids": ids,
                        "vector": forward(t, cfg, ids, offset, pooling),
                    }
                )
        reference[name] = cases
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
