"""The T5 sentencepiece tokenizer, as CogVideoX calls it, without transformers.

CogVideoX tokenizes each caption with ``padding="max_length", max_length=226,
truncation=True, add_special_tokens=True``: sentencepiece ids, truncated to 225, then ``</s>``
(id 1), then ``<pad>`` (id 0) up to 226. ``T5Tokenizer.from_folder`` reads a transformers
``tokenizer/`` folder (``spiece.model`` + optional ``tokenizer_config.json``) and reproduces
that, including T5's sentinel tokens ``<extra_id_N>`` (ids counted down from the top of the
vocabulary) and literal ``</s>``/``<pad>``/``<unk>`` in the text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np

COGVIDEOX_TEXT_LEN = 226


class T5Tokenizer:
    """captions -> (ids (N, max_length) int32, mask (N, max_length) bool, True = real token)."""

    def __init__(self, model_proto: bytes, *, max_length: int = COGVIDEOX_TEXT_LEN, extra_ids=100):
        import sentencepiece as spm

        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (a token and </s>), got {max_length}")
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.max_length = max_length
        self.extra_ids = int(extra_ids)
        self.pad_id, self.eos_id, self.unk_id = 0, 1, 2
        for name, want in (("pad", 0), ("eos", 1), ("unk", 2)):
            got = getattr(self.sp, f"{name}_id")()
            if got != want:
                raise ValueError(f"spiece.model {name}_id is {got}; T5 vocabularies use {want}")
        self.vocab_size = self.sp.get_piece_size() + self.extra_ids
        self._special = {"</s>": self.eos_id, "<pad>": self.pad_id, "<unk>": self.unk_id}
        self._split = re.compile(r"(<extra_id_\d+>|</s>|<pad>|<unk>)")

    @classmethod
    def from_folder(cls, path: str | os.PathLike, *, max_length: int = COGVIDEOX_TEXT_LEN):
        """A transformers ``tokenizer/`` folder (or a pipeline folder holding one)."""
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, "spiece.model")) and os.path.isdir(
            os.path.join(path, "tokenizer")
        ):
            path = os.path.join(path, "tokenizer")
        model_file = os.path.join(path, "spiece.model")
        if not os.path.isfile(model_file):
            raise ValueError(f"no spiece.model in tokenizer folder {path!r}")
        extra_ids = 100
        config_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_file):
            with open(config_file) as f:
                extra_ids = json.load(f).get("extra_ids", extra_ids)
        with open(model_file, "rb") as f:
            return cls(f.read(), max_length=max_length, extra_ids=extra_ids)

    def _piece_ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split.split(text):
            if not part:
                continue
            if part in self._special:
                ids.append(self._special[part])
            elif part.startswith("<extra_id_"):
                n = int(part[len("<extra_id_") : -1])
                if n < self.extra_ids:
                    ids.append(self.vocab_size - 1 - n)
                else:
                    ids.extend(self.sp.encode(part))
            else:
                ids.extend(self.sp.encode(part))
        return ids

    def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(captions, str):
            raise ValueError("captions must be a sequence of strings, not one string")
        ids = np.full((len(captions), self.max_length), self.pad_id, np.int32)
        mask = np.zeros((len(captions), self.max_length), bool)
        for n, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"caption {n} must be a str, got {type(caption).__name__}")
            row = self._piece_ids(caption)[: self.max_length - 1] + [self.eos_id]
            ids[n, : len(row)] = row
            mask[n, : len(row)] = True
        return ids, mask
