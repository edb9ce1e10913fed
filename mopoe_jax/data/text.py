"""Word tokenization and the report vocabulary shared by every dataset builder.

The reference tokenized reports with NLTK's ``word_tokenize``; its model data cannot be
downloaded here, so :func:`tokenize` is a regular-expression tokenizer with the same behaviour
on report text: lower-cased words, numbers (``3.5``, ``10``), contractions split the Treebank
way (``isn't`` -> ``is``, ``n't``) and every punctuation mark a token of its own.

Special ids follow the reference: ``<exc>`` = 0 (unknown word), ``<pad>`` = 1, ``<eos>`` = 2.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Iterable, Sequence

import numpy as np

EXC, PAD, EOS = "<exc>", "<pad>", "<eos>"
EXC_ID, PAD_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = (EXC, PAD, EOS)

_TOKEN_RE = re.compile(
  r"[a-z]+(?=n't\b)"  # 'is' of "isn't" (the Treebank split)
  r"|n't\b"  # the "n't" itself
  r"|'(?:s|re|ve|ll|d|m)\b"  # other clitics
  r"|\d+(?:[.,]\d+)*"  # numbers, 3.5 / 1,000
  r"|[a-z]+(?:[-'][a-z]+)*"  # words, hyphenated words
  r"|_+"  # MIMIC's de-identification placeholder ___ stays one token
  r"|[^\sa-z\d]"  # any other single non-space character
)


def tokenize(text: str) -> list[str]:
  """Lower-cases ``text`` and splits it into word tokens."""
  return _TOKEN_RE.findall(text.lower())


class Vocabulary:
  """A fixed word <-> id mapping; ids 0, 1, 2 are ``<exc>``, ``<pad>``, ``<eos>``."""

  def __init__(self, words: Sequence[str]):
    words = list(words)
    if tuple(words[:3]) != SPECIAL_TOKENS:
      raise ValueError(f"A vocabulary must start with {SPECIAL_TOKENS}, got {tuple(words[:3])}.")
    if len(set(words)) != len(words):
      raise ValueError("A vocabulary must not repeat words.")
    self.words = words
    self._ids = {w: i for i, w in enumerate(words)}

  def __len__(self) -> int:
    return len(self.words)

  @property
  def pad_id(self) -> int:
    """The id of ``<pad>``, which fills a report after ``<eos>``."""
    return PAD_ID

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.words == other.words

  @classmethod
  def build(cls, texts: Iterable[str], min_count: int = 3) -> "Vocabulary":
    """Keeps the words seen MORE than ``min_count`` times in ``texts`` (the reference's rule).

    Words are ordered by decreasing count, ties alphabetically, so the ids are deterministic.
    """
    counts = collections.Counter()
    for text in texts:
      counts.update(tokenize(text))
    for special in SPECIAL_TOKENS:
      counts.pop(special, None)
    kept = sorted((w for w, c in counts.items() if c > min_count), key=lambda w: (-counts[w], w))
    return cls(list(SPECIAL_TOKENS) + kept)

  def encode(self, text: str, length: int) -> np.ndarray:
    """Word ids of ``text``: at most ``length - 1`` words, ``<eos>``, ``<pad>`` to ``length``."""
    if length < 2:
      raise ValueError(f"Text length must be at least 2 (one word and <eos>), got {length}.")
    ids = [self._ids.get(w, EXC_ID) for w in tokenize(text)][: length - 1]
    ids.append(EOS_ID)
    ids.extend([PAD_ID] * (length - len(ids)))
    return np.asarray(ids, dtype=np.int32)

  def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
    """Words of ``ids`` joined by spaces; stops at ``<eos>`` and drops ``<pad>``."""
    out = []
    for i in np.asarray(ids).tolist():
      if stop_at_eos and i == EOS_ID:
        break
      if i == PAD_ID:
        continue
      out.append(self.words[i] if 0 <= i < len(self.words) else EXC)
    return " ".join(out)

  def to_json(self) -> str:
    return json.dumps(self.words)

  @classmethod
  def from_json(cls, text: str) -> "Vocabulary":
    return cls(json.loads(text))
