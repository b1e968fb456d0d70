"""Byte-level BPE tokenizer, trained with the `tokenizers` library (Rust, fast).

- Every digit is its own token, then GPT-2 style byte-level splitting: one token = one digit makes
  arithmetic learnable for small models, and any UTF-8 text encodes, with no <unk>.
- No normalizer: decode(encode(s)) == s exactly; `decode` drops pad and bos but keeps eos.
- Special tokens `<|bos|>`, `<|eos|>`, `<|pad|>` get ids 0, 1, 2; `encode` never adds them, and
  their strings inside text encode as ordinary text: text cannot inject control tokens.
"""

import os
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from nanorl.runtime import write_atomically

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD]  # this order gives ids 0, 1, 2
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # specials + one token per byte


class Tokenizer:
    def __init__(self, tok: HFTokenizer):
        # special-token strings in text stay plain text (not saved in the JSON, so set on every construction)
        tok.encode_special_tokens = True
        self._tok = tok
        ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise ValueError(f"tokenizer lacks special tokens {SPECIAL_TOKENS}")
        self.bos_id, self.eos_id, self.pad_id = ids
        self._drop_on_decode = {self.bos_id, self.pad_id}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Train a BPE vocabulary of at most `vocab_size` tokens (specials included)."""
        if vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size={vocab_size} is too small: need >= {MIN_VOCAB} "
                             f"(3 special tokens + 256 bytes)")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tok.decoder = decoders.ByteLevel()
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
        write_atomically(path, self._tok.save)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path} "
                                    f"(train one with train_pretrain.py, or check the run dir)")
        return cls(HFTokenizer.from_file(path))

    def to_json(self) -> str:
        """The full tokenizer as a JSON string (used to fingerprint token caches)."""
        return self._tok.to_str()

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

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
