"""Tests for nanorl/tokenizer.py: exact round trips, single digits, specials, save/load."""

import random

import pytest

from nanorl.tokenizer import Tokenizer

CORPUS = [
    "Tom has 12 apples. He buys 30 more apples. How many apples does Tom have now?\n\n"
    "def simple_math_problem() -> int:\n    apples = 12\n    result = apples + 30\n    return result\n",
    "Lily starts with 31 eggs.\nThen she finds 12 more, so 31 + 12 = 43.\nThe answer is \\boxed{43}.",
    "<llm-code>\nbooks = 17\nbuys = 18\nbooks + buys\n</llm-code>\n<llm-code-output>\n35\n</llm-code-output>",
    "Multiplication is repeated addition: 5 x 15 = 75.",
] * 20

FIXED = [
    "", " ", "  two  spaces  ", "\n", "\r\n", "a\r\nb\n\nc\t\td", "\ttab", "trailing ",
    "emoji 😀🎉👍🏽 and family 👨‍👩‍👧", "中文字符 日本語 한국어", "Ünïcödé çåfé naïve",
    "12345", "3.14159 -42 1e10", "x<|eos|>y<|bos|>z<|pad|>", "\x00\x01\x7f", "\u200b zero width",
    "The answer is \\boxed{43}.", "   leading", "mixed\u00a0nbsp", "\ufeffbom",
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=320)


def random_unicode(rng: random.Random, n: int) -> str:
    # any code point except surrogates (which are not valid in UTF-8)
    chars = []
    while len(chars) < n:
        cp = rng.choice([rng.randrange(0x80), rng.randrange(0x800), rng.randrange(0x110000)])
        if not 0xD800 <= cp <= 0xDFFF:
            chars.append(chr(cp))
    return "".join(chars)


def test_round_trip_fixed(tok):
    for s in FIXED + CORPUS[:4]:
        assert tok.decode(tok.encode(s)) == s, repr(s)


def test_round_trip_random_unicode(tok):
    rng = random.Random(0)
    texts = [random_unicode(rng, rng.randrange(0, 40)) for _ in range(300)]
    for s, ids in zip(texts, tok.encode_batch(texts)):
        assert tok.decode(ids) == s, repr(s)


def test_digits_are_single_tokens(tok):
    ids = tok.encode("12345")
    assert len(ids) == 5
    assert [tok.decode([i]) for i in ids] == list("12345")
    # digits the corpus saw together many times ("12", "31") stay split, and never merge
    # with a neighbouring space or symbol either
    pieces = [tok.decode([i]) for i in tok.encode("31 + 12 = 43, x12y")]
    assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p)), pieces
    assert sum(p.isdigit() for p in pieces) == 8


def test_special_ids(tok):
    ids = {tok.bos_id, tok.eos_id, tok.pad_id}
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert len(ids) == 3 and max(ids) < tok.vocab_size


def test_encode_adds_no_specials_and_text_cannot_inject_them(tok):
    ids = tok.encode("hello <|eos|> <|bos|>")
    assert not {tok.bos_id, tok.eos_id, tok.pad_id} & set(ids)


def test_decode_drops_pad_and_bos_keeps_eos(tok):
    ids = [tok.pad_id, tok.pad_id, tok.bos_id] + tok.encode("ab 1") + [tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "ab 1<|eos|>"
    assert tok.decode_batch([ids, tok.encode("x")]) == ["ab 1<|eos|>", "x"]


def test_save_load_identical(tok, tmp_path):
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    tok2 = Tokenizer.load(path)
    texts = FIXED + CORPUS[:4]
    assert tok2.encode_batch(texts) == tok.encode_batch(texts)
    assert tok2.vocab_size == tok.vocab_size
    assert (tok2.bos_id, tok2.eos_id, tok2.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert tok2.encode("<|eos|>") == tok.encode("<|eos|>") != [tok.eos_id]


def test_load_missing_file(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(path)


def test_encode_batch_matches_encode(tok):
    texts = FIXED + CORPUS[:4]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_vocab_size_respected():
    for requested in (259, 300, 400):
        assert Tokenizer.train(CORPUS, vocab_size=requested).vocab_size <= requested
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train(CORPUS, vocab_size=100)
