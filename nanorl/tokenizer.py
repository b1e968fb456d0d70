"""Byte-level BPE tokenizer, trained with the `tokenizers` library (Rust, fast).

What it does:
- Pre-tokenization: every digit is its own token (`Digits(individual_digits=True)`), then
  GPT-2 style byte-level splitting (`ByteLevel(add_prefix_space=False)`). Single-digit
  numbers make arithmetic learnable for small models (one token = one digit, aligned the
  same way in every number); byte level means any UTF-8 text encodes, with no <unk>.
- No normalizer and no stripping: decode(encode(s)) == s exactly, for any string.
- Special tokens `<|bos|>`, `<|eos|>`, `<|pad|>` get ids 0, 1, 2. `encode` never adds them;
  callers write `[tok.bos_id] + tok.encode(text) + [tok.eos_id]` where they want them.
- Special-token strings that appear inside text (e.g. a model writing "<|eos|>" literally)
  are encoded as ordinary text, never as the special id: text cannot inject control tokens.

Deviations from a stock `tokenizers` setup: the byte alphabet is always added to the
trainer so a tiny training corpus still covers every byte; `decode` drops pad and bos but
keeps eos (and any other id), so it is the exact inverse of `encode` and still shows where
a sample ended.
"""

import os
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD]  # this order gives ids 0, 1, 2
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # specials + one token per byte


class Tokenizer:
    """A thin wrapper around a `tokenizers.Tokenizer` with the nanorl conventions."""

    def __init__(self, tok: HFTokenizer):
        # Treat special-token strings in text as plain text (not saved in the JSON, so it
        # is set here, on every construction path).
        tok.encode_special_tokens = True
        self._tok = tok
        ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise ValueError(f"tokenizer lacks special tokens {SPECIAL_TOKENS}")
        self._bos, self._eos, self._pad = ids
        self._drop_on_decode = {self._bos, self._pad}

    # ---- construction -------------------------------------------------------------------

    @staticmethod
    def _empty() -> HFTokenizer:
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tok.decoder = decoders.ByteLevel()
        return tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Train a BPE vocabulary of at most `vocab_size` tokens (specials included)."""
        if vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size={vocab_size} is too small: need >= {MIN_VOCAB} "
                             f"(3 special tokens + 256 bytes)")
        tok = cls._empty()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            # all 256 bytes, even those absent from the corpus, so any text encodes
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    def save(self, path: str) -> None:
        """Write the tokenizer as one `tokenizers` JSON file (atomically)."""
        tmp = f"{path}.tmp{os.getpid()}"
        self._tok.save(tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path} "
                                    f"(train one with train_pretrain.py, or check the run dir)")
        return cls(HFTokenizer.from_file(path))

    def to_json(self) -> str:
        """The full tokenizer as a JSON string (used to fingerprint token caches)."""
        return self._tok.to_str()

    # ---- encode / decode ----------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # the batched call runs in parallel in Rust
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def _keep(self, ids) -> list[int]:
        # accepts lists, numpy arrays and tensors; pad and bos are layout, not text
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return [int(i) for i in ids if int(i) not in self._drop_on_decode]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(self._keep(ids), skip_special_tokens=False)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return self._tok.decode_batch([self._keep(ids) for ids in batch],
                                      skip_special_tokens=False)

    # ---- properties ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
