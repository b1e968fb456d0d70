"""Open pretraining mixtures: sources -> documents -> cached token files -> random batches.

A mixture is `name=w` (round(w * docs_per_source) documents from tasks.synthetic_documents) or
`name=path.jsonl:w` (a JSONL file's documents, fields by FIELDS, repeated w times, the fraction a
seeded subset), joined by commas: weights are repeat counts, as in the paper's "TinyGSM + 4xOMI1".
Each document is tokenized as `[bos] + encode(doc) + [eos]` into train.bin (all sources, shuffled)
and val_<source>.bin, split per source over DISTINCT texts so that repeats cannot leak val into
train; meta.json, written last, holds the counts and a key over texts, tokenizer, split and seed.
Deviation from the paper: documents are concatenated and cut into random windows (nanoGPT style),
not packed per sequence with attention masking across documents.
"""

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from nanorl import tasks
from nanorl.runtime import DataError, iter_jsonl, write_atomically, write_text

SYNTHETIC = tasks.SOURCES  # produced by tasks.synthetic_documents
FIELDS = {  # JSONL field mapping: document = "\n\n".join(row[f] for f in fields)
    "tinygsm": ("question", "code"),
    "omi1": ("question", "generated_solution"),
    "omi2": ("problem", "generated_solution"),
    "finemath": ("text",),
    "gsm8k": ("question", "answer"),
}
MIXTURE_SYNTAX = ('expected "name=weight" or "name=path.jsonl:weight" joined by commas, '
                  'e.g. "tinygsm=1,omi1=4,omi2=1,finemath=1" or "omi2=data/omi2.jsonl:2,finemath=1"; '
                  f'synthetic names: {", ".join(SYNTHETIC)}; file names: {", ".join(FIELDS)}')
CACHE_VERSION = 1  # bump when the cache layout changes
ENCODE_CHUNK = 1024  # documents per encode_batch call


@dataclass(frozen=True)
class Source:
    name: str
    weight: float
    path: str | None = None  # None: synthetic documents from nanorl.tasks


def derive_seed(seed: int, *names: str) -> int:
    """A stable per-purpose seed (Python's hash() is salted per process, so not that)."""
    digest = hashlib.sha256(":".join([str(seed), *names]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _parse_weight(text: str, entry: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise DataError(f"mixture entry {entry!r}: weight {text!r} is not a number; {MIXTURE_SYNTAX}") from None
    if not math.isfinite(w) or w < 0:
        raise DataError(f"mixture entry {entry!r}: weight must be a finite number >= 0; {MIXTURE_SYNTAX}")
    return w


def _parse_entry(entry: str) -> Source:
    name, sep, value = (s.strip() for s in entry.partition("="))
    if not sep or not name or not value:
        raise DataError(f"bad mixture entry {entry!r}; {MIXTURE_SYNTAX}")
    if name not in FIELDS:
        raise DataError(f"unknown source {name!r} in {entry!r}; {MIXTURE_SYNTAX}")
    if ":" not in value:  # synthetic: name=weight
        if name not in SYNTHETIC:
            raise DataError(f"source {name!r} has no synthetic generator: give a file, "
                            f"{name}=path.jsonl:weight; {MIXTURE_SYNTAX}")
        return Source(name, _parse_weight(value, entry))
    path, _, weight = value.rpartition(":")  # rpartition: the path itself may hold ':'
    if not path:
        raise DataError(f"mixture entry {entry!r} has an empty path; {MIXTURE_SYNTAX}")
    return Source(name, _parse_weight(weight.strip(), entry), path.strip())


def parse_mixture(spec: str) -> list[Source]:
    entries = [e for e in (spec or "").split(",") if e.strip()]
    if not entries:
        raise DataError(f"empty mixture {spec!r}; {MIXTURE_SYNTAX}")
    sources = [_parse_entry(e) for e in entries]
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"source {dupes[0]!r} appears twice in mixture {spec!r}; {MIXTURE_SYNTAX}")
    return sources


def _row_document(row, name: str, where: str) -> str | None:
    """The document text of one JSONL row, or None for a row to skip."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if name == "omi1" and row.get("is_correct") is False:
        return None  # OMI1 keeps wrong generated solutions; the paper trains on correct ones
    parts = []
    for field in FIELDS[name]:
        if field not in row:
            raise DataError(f"{where}: missing field {field!r} (a {name} row needs "
                            f"{', '.join(FIELDS[name])})")
        if not isinstance(row[field], str):
            raise DataError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
        parts.append(row[field])
    return "\n\n".join(parts)


def read_jsonl_documents(path: str, name: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path} (source {name!r})")
    docs = (_row_document(row, name, where) for where, row in iter_jsonl(path))
    return [doc for doc in docs if doc is not None]


def _repeat(docs: list[str], weight: float, seed: int) -> list[str]:
    whole = int(weight)
    n_extra = round((weight - whole) * len(docs))
    extra = np.random.default_rng(seed).permutation(len(docs))[:n_extra]
    return docs * whole + [docs[i] for i in sorted(extra)]


def load_documents(sources: list[Source], docs_per_source: int, seed: int) -> dict[str, list[str]]:
    out = {}
    for src in sources:
        if src.path is None:
            n = round(src.weight * docs_per_source)
            out[src.name] = tasks.synthetic_documents(src.name, n, derive_seed(seed, "docs", src.name))
        else:
            docs = read_jsonl_documents(src.path, src.name)
            if not docs and src.weight > 0:
                raise DataError(f"{src.path}: no documents for source {src.name!r}")
            out[src.name] = _repeat(docs, src.weight, derive_seed(seed, "repeat", src.name))
    return out


@dataclass
class TokenData:
    train: np.ndarray  # uint16 tokens of all train documents, shuffled and concatenated
    val: dict[str, np.ndarray]  # per source: uint16 tokens of its val documents
    meta: dict  # counts per source, vocab size, cache key (the contents of meta.json)


def cache_key(docs_by_source: dict[str, list[str]], tokenizer, val_fraction: float, seed: int) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, val_fraction, seed]).encode())
    h.update(hashlib.sha256(tokenizer.to_json().encode()).digest())
    for name, docs in docs_by_source.items():
        h.update(f"\0{name}\0{len(docs)}\0".encode())
        for doc in docs:
            b = doc.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little") + b)  # length prefix: no ambiguous joins
    return h.hexdigest()


def _split(docs: list[str], val_fraction: float, seed: int):
    """Distinct texts, the set of their indices held out for val, and each doc's index."""
    index = {}
    doc_idx = np.array([index.setdefault(d, len(index)) for d in docs], dtype=np.int64)
    n = len(index)
    n_val = 0 if n < 2 or val_fraction <= 0 else min(n - 1, max(1, round(val_fraction * n)))
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return list(index), is_val, doc_idx


def _tokenize(texts: list[str], tokenizer, desc: str):
    """[bos] + encode(text) + [eos] for each text: one flat uint16 array and offsets."""
    bos, eos = np.uint16(tokenizer.bos_id), np.uint16(tokenizer.eos_id)
    parts = []
    with tqdm(total=len(texts), desc=desc, unit="doc", leave=False) as bar:
        for i in range(0, len(texts), ENCODE_CHUNK):
            for ids in tokenizer.encode_batch(texts[i:i + ENCODE_CHUNK]):
                parts.append(np.concatenate([[bos], np.asarray(ids, dtype=np.uint16), [eos]]))
            bar.update(len(texts[i:i + ENCODE_CHUNK]))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return flat, offsets


def _read_tokens(path: str) -> np.ndarray:
    # np.memmap cannot map an empty file
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r")


def _load_cache(cache_dir: str, key: str) -> TokenData | None:
    """The cached TokenData if meta.json matches `key` and every file is intact, else None."""
    try:
        with open(os.path.join(cache_dir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("key") != key:
        return None
    files = {"train.bin": meta["train_tokens"]}
    files.update({f"val_{n}.bin": s["val_tokens"] for n, s in meta["sources"].items()})
    for fname, n_tokens in files.items():
        path = os.path.join(cache_dir, fname)
        if not os.path.isfile(path) or os.path.getsize(path) != 2 * n_tokens:
            return None
    val = {n: _read_tokens(os.path.join(cache_dir, f"val_{n}.bin")) for n in meta["sources"]}
    return TokenData(_read_tokens(os.path.join(cache_dir, "train.bin")), val, meta)


def build_token_cache(docs_by_source: dict[str, list[str]], tokenizer, cache_dir: str, *,
                      val_fraction: float = 0.05, seed: int = 0) -> TokenData:
    """Tokenize the mixture into cache_dir, or reuse what is there when its key matches."""
    if tokenizer.vocab_size >= 2**16:
        raise ValueError(f"vocab_size {tokenizer.vocab_size} does not fit the uint16 token files")
    key = cache_key(docs_by_source, tokenizer, val_fraction, seed)
    cached = _load_cache(cache_dir, key)
    if cached is not None:
        return cached
    os.makedirs(cache_dir, exist_ok=True)
    meta_path = os.path.join(cache_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the old cache is invalid from here on, even if we crash

    names, flats, offsets, train_src, train_doc, stats = list(docs_by_source), [], [], [], [], {}
    for s, name in enumerate(names):
        distinct, is_val, doc_idx = _split(docs_by_source[name], val_fraction, derive_seed(seed, "split", name))
        flat, offs = _tokenize(distinct, tokenizer, desc=f"tokenize {name}")
        lengths = np.diff(offs)
        train_idx = doc_idx[~is_val[doc_idx]]  # every copy of every train text
        val_idx = np.flatnonzero(is_val)  # one copy of each val text
        val_tokens = np.concatenate([flat[offs[j]:offs[j + 1]] for j in val_idx]) if len(val_idx) else flat[:0]
        write_atomically(os.path.join(cache_dir, f"val_{name}.bin"), val_tokens.tofile)
        flats.append(flat)
        offsets.append(offs)
        train_src.append(np.full(len(train_idx), s, dtype=np.int64))
        train_doc.append(train_idx)
        stats[name] = {"docs": len(docs_by_source[name]), "distinct_docs": len(distinct),
                       "train_docs": int(len(train_idx)), "val_docs": int(len(val_idx)),
                       "train_tokens": int(lengths[train_idx].sum()), "val_tokens": int(len(val_tokens))}

    src, doc = np.concatenate(train_src), np.concatenate(train_doc)
    if len(src) == 0:
        raise DataError("the mixture has no training documents (all weights 0?)")
    order = np.random.default_rng(derive_seed(seed, "shuffle")).permutation(len(src))

    def write_train(tmp):
        with open(tmp, "wb") as f:
            for i in range(0, len(order), 4096):  # gather in chunks to bound memory
                chunk = order[i:i + 4096]
                np.concatenate([flats[src[k]][offsets[src[k]][doc[k]]:offsets[src[k]][doc[k] + 1]]
                                for k in chunk]).tofile(f)

    write_atomically(os.path.join(cache_dir, "train.bin"), write_train)
    for fname in os.listdir(cache_dir):  # val files of sources no longer in the mixture
        if fname.startswith("val_") and fname.endswith(".bin") and fname[4:-4] not in stats:
            os.remove(os.path.join(cache_dir, fname))
    meta = {"key": key, "version": CACHE_VERSION, "vocab_size": tokenizer.vocab_size,
            "dtype": "uint16", "val_fraction": val_fraction, "seed": seed,
            "train_tokens": sum(s["train_tokens"] for s in stats.values()),
            "train_docs": int(len(src)), "sources": stats}
    write_text(meta_path, json.dumps(meta, indent=2))
    return _load_cache(cache_dir, key)


def get_batch(tokens: np.ndarray, batch_size: int, block_size: int,
              generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of block_size tokens: x, and y = x shifted by one."""
    n = len(tokens)
    if n < block_size + 1:
        raise DataError(f"token array has {n} tokens but a batch window needs block_size + 1 = "
                        f"{block_size + 1}: lower --block_size or add data")
    # offsets from the caller's generator, so its saved state replays the same batches
    starts = torch.randint(n - block_size, (batch_size,), generator=generator).numpy()
    windows = np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)
    xy = torch.from_numpy(windows)
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    if torch.device(device).type == "cuda":
        # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
