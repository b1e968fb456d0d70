"""Tests for nanorl/data.py: mixture specs, JSONL sources, weights, the token cache, batches."""

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from nanorl.data import DataError, Source, build_token_cache, get_batch, load_documents, parse_mixture
from nanorl.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    docs = load_documents(parse_mixture("tinygsm=1,omi1=1,omi2=1,finemath=1"), 50, seed=123)
    return Tokenizer.train([d for v in docs.values() for d in v], vocab_size=300)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def split_docs(tokens, tok):
    """The documents of a token file, decoded (each is [bos] ... [eos])."""
    ids = np.asarray(tokens).tolist()
    starts = [i for i, t in enumerate(ids) if t == tok.bos_id] + [len(ids)]
    return [tok.decode(ids[a:b]).removesuffix("<|eos|>") for a, b in zip(starts, starts[1:])]


# ----------------------------------------------------------------------------- mixtures

def test_parse_mixture_good():
    assert parse_mixture("tinygsm=1,omi1=4,omi2=1,finemath=1") == [
        Source("tinygsm", 1.0), Source("omi1", 4.0), Source("omi2", 1.0), Source("finemath", 1.0)]
    assert parse_mixture(" omi2 = data/omi2.jsonl:2 , finemath=0.5 ") == [
        Source("omi2", 2.0, "data/omi2.jsonl"), Source("finemath", 0.5)]
    assert parse_mixture("gsm8k=C:/d/g.jsonl:1.5") == [Source("gsm8k", 1.5, "C:/d/g.jsonl")]
    assert parse_mixture("tinygsm=0") == [Source("tinygsm", 0.0)]


@pytest.mark.parametrize("spec", [
    "", " , ", "tinygsm", "=1", "tinygsm=", "pile=1", "gsm8k=1", "tinygsm=-1", "tinygsm=abc",
    "tinygsm=inf", "tinygsm=1,tinygsm=2", "omi2=data/x.jsonl:two", "omi2=:2", "pile=x.jsonl:1",
])
def test_parse_mixture_bad(spec):
    with pytest.raises(DataError, match="expected") as e:
        parse_mixture(spec)
    assert "tinygsm=1,omi1=4" in str(e.value)  # the message shows the syntax by example


# ----------------------------------------------------------------------------- documents

def test_synthetic_weights_exact_ratio():
    docs = load_documents(parse_mixture("tinygsm=1,omi1=3"), 40, seed=0)
    assert {k: len(v) for k, v in docs.items()} == {"tinygsm": 40, "omi1": 120}
    assert len(set(docs["omi1"])) == 120  # 3x means 3x as many different documents
    assert load_documents(parse_mixture("tinygsm=1,omi1=3"), 40, seed=0) == docs
    assert load_documents(parse_mixture("tinygsm=1"), 40, seed=1)["tinygsm"] != docs["tinygsm"]


def test_file_fractional_repeat(tmp_path):
    path = write_jsonl(tmp_path / "fm.jsonl", [{"text": f"doc {i}"} for i in range(100)])
    docs = load_documents([Source("finemath", 2.5, path)], 7, seed=0)["finemath"]
    assert len(docs) == 250
    counts = Counter(docs)
    assert len(counts) == 100 and sorted(Counter(counts.values()).items()) == [(2, 50), (3, 50)]
    assert load_documents([Source("finemath", 2.5, path)], 7, seed=0)["finemath"] == docs
    assert len(load_documents([Source("finemath", 0.25, path)], 7, seed=0)["finemath"]) == 25


@pytest.mark.parametrize("name,rows,expected", [
    ("tinygsm", [{"question": "Q1?", "code": "def f():\n    return 1", "x": 0}], ["Q1?\n\ndef f():\n    return 1"]),
    ("omi1", [{"question": "Q", "generated_solution": "A \\boxed{1}", "is_correct": True},
              {"question": "Q", "generated_solution": "wrong", "is_correct": False},
              {"question": "Q2", "generated_solution": "S2"}], ["Q\n\nA \\boxed{1}", "Q2\n\nS2"]),
    ("omi2", [{"problem": "P 😀", "generated_solution": "S\n\\boxed{2}"}], ["P 😀\n\nS\n\\boxed{2}"]),
    ("finemath", [{"text": "Some prose.\n\nMore.", "score": 3.5}], ["Some prose.\n\nMore."]),
    ("gsm8k", [{"question": "How many?", "answer": "2 + 2 = 4\n#### 4"}], ["How many?\n\n2 + 2 = 4\n#### 4"]),
])
def test_jsonl_field_mapping(tmp_path, name, rows, expected):
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows[:1] + [""] + rows[1:])  # blank line skipped
    spec = f"{name}={path}:1"
    assert load_documents(parse_mixture(spec), 10, seed=0) == {name: expected}


@pytest.mark.parametrize("bad,what", [
    ('{"text": "unterminated', "invalid JSON"),
    ('["a", "list"]', "expected a JSON object"),
    ('{"txt": "typo"}', "missing field 'text'"),
    ('{"text": 5}', "must be a string"),
])
def test_malformed_line(tmp_path, bad, what):
    path = write_jsonl(tmp_path / "broken.jsonl", [{"text": "ok"}, "", bad, {"text": "ok"}])
    with pytest.raises(DataError) as e:
        load_documents([Source("finemath", 1.0, path)], 10, seed=0)
    msg = str(e.value)
    assert "broken.jsonl" in msg and "line 3" in msg and what in msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere.jsonl"):
        load_documents(parse_mixture(f"gsm8k={tmp_path}/nothere.jsonl:1"), 10, seed=0)


# ----------------------------------------------------------------------------- token cache

def test_cache_token_shares(tok, tmp_path):
    docs = load_documents(parse_mixture("tinygsm=1,omi1=3"), 60, seed=0)
    td = build_token_cache(docs, tok, str(tmp_path), val_fraction=0.1, seed=0)
    # expected share: every document of the source, tokenized as [bos] + doc + [eos]
    full = {k: sum(len(ids) + 2 for ids in tok.encode_batch(v)) for k, v in docs.items()}
    expected = full["omi1"] / sum(full.values())
    train_docs = split_docs(td.train, tok)
    assert len(train_docs) == td.meta["train_docs"] == 54 + 162  # 10% of each source held out
    omi1_tokens = sum(len(tok.encode(d)) + 2 for d in train_docs if "<llm-code>" in d)
    assert abs(omi1_tokens / len(td.train) - expected) < 0.02
    assert td.meta["sources"]["omi1"]["train_tokens"] == omi1_tokens
    assert td.train.dtype == np.uint16 and len(td.train) == td.meta["train_tokens"]
    val = {k: split_docs(v, tok) for k, v in td.val.items()}
    assert {k: len(v) for k, v in val.items()} == {"tinygsm": 6, "omi1": 18}
    assert sorted(train_docs + val["tinygsm"] + val["omi1"]) == sorted(docs["tinygsm"] + docs["omi1"])


def test_repeated_file_source_no_val_leak(tok, tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(40)])
    docs = load_documents([Source("gsm8k", 3.0, path)], 10, seed=0)
    td = build_token_cache(docs, tok, str(tmp_path / "cache"), val_fraction=0.1, seed=0)
    train, val = split_docs(td.train, tok), split_docs(td.val["gsm8k"], tok)
    assert len(val) == 4 and len(set(val)) == 4 and not set(val) & set(train)
    assert len(train) == 36 * 3


def test_cache_reuse_and_invalidation(tok, tmp_path, monkeypatch):
    docs = load_documents(parse_mixture("omi2=1,finemath=1"), 30, seed=0)
    cache = str(tmp_path / "cache")
    first = build_token_cache(docs, tok, cache)
    meta_mtime = os.stat(os.path.join(cache, "meta.json")).st_mtime_ns

    # same data, same tokenizer (even reloaded from disk): nothing is tokenized again
    tok.save(str(tmp_path / "tok.json"))
    reloaded = Tokenizer.load(str(tmp_path / "tok.json"))
    calls = []
    monkeypatch.setattr(reloaded, "encode_batch", lambda texts: calls.append(texts) or [])
    again = build_token_cache(docs, reloaded, cache)
    assert calls == [] and os.stat(os.path.join(cache, "meta.json")).st_mtime_ns == meta_mtime
    assert np.array_equal(again.train, first.train) and again.meta == first.meta

    # a different tokenizer: rebuilt, with its vocab
    other = Tokenizer.train(docs["omi2"], vocab_size=280)
    rebuilt = build_token_cache(docs, other, cache)
    assert rebuilt.meta["key"] != first.meta["key"] and rebuilt.meta["vocab_size"] == other.vocab_size
    assert split_docs(rebuilt.train, other) and int(rebuilt.train.max()) < other.vocab_size

    # different data (one source dropped): rebuilt, and the stale val file is gone
    fewer = build_token_cache({"omi2": docs["omi2"]}, other, cache)
    assert set(fewer.val) == {"omi2"} and not os.path.exists(os.path.join(cache, "val_finemath.bin"))


def test_cache_rejects_no_documents(tok, tmp_path):
    with pytest.raises(DataError, match="no training documents"):
        build_token_cache({"tinygsm": []}, tok, str(tmp_path))


# ----------------------------------------------------------------------------- batches

def test_get_batch_windows_and_reproducibility():
    tokens = np.arange(1000, dtype=np.uint16)  # token value == its position
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    x, y = get_batch(tokens, 8, 16, g, "cpu")
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))  # contiguous windows
    assert int(x[:, 0].min()) >= 0 and int(y.max()) <= 999
    x_next, _ = get_batch(tokens, 8, 16, g, "cpu")
    g.set_state(state)
    x2, y2 = get_batch(tokens, 8, 16, g, "cpu")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(get_batch(tokens, 8, 16, g, "cpu")[0], x_next)


def test_get_batch_too_short():
    get_batch(np.arange(17, dtype=np.uint16), 2, 16, torch.Generator(), "cpu")  # exactly enough
    with pytest.raises(DataError, match="block_size"):
        get_batch(np.arange(16, dtype=np.uint16), 2, 16, torch.Generator(), "cpu")
