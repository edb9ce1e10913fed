"""Tokenizer and vocabulary."""

import numpy as np
import pytest

from mopoe_jax.data import text


def test_tokenize_splits_like_the_treebank_rules():
  assert text.tokenize("There isn't a 3.5 cm left-sided effusion; heart size is NORMAL.") == [
    "there",
    "is",
    "n't",
    "a",
    "3.5",
    "cm",
    "left-sided",
    "effusion",
    ";",
    "heart",
    "size",
    "is",
    "normal",
    ".",
  ]
  assert text.tokenize("Dr. ___ paged.") == ["dr", ".", "___", "paged", "."]


def test_vocabulary_keeps_words_seen_more_than_min_count():
  texts = ["a a a a b b b b c c c", "b"]  # a: 4, b: 5, c: 3
  vocab = text.Vocabulary.build(texts, min_count=3)
  assert vocab.words == ["<exc>", "<pad>", "<eos>", "b", "a"]  # by count, c dropped (3 <= 3)


def test_encode_decode_round_trip_with_eos_padding_and_unknowns():
  vocab = text.Vocabulary(["<exc>", "<pad>", "<eos>", "heart", "normal", "size"])
  ids = vocab.encode("Heart size normal, really", 8)
  np.testing.assert_array_equal(ids, [3, 5, 4, 0, 0, 2, 1, 1])  # ',' and 'really' unknown
  assert vocab.decode(ids) == "heart size normal <exc> <exc>"
  # Truncation keeps room for <eos>.
  np.testing.assert_array_equal(vocab.encode("heart " * 10, 4), [3, 3, 3, 2])
  assert text.Vocabulary.from_json(vocab.to_json()) == vocab
  with pytest.raises(ValueError, match="must start with"):
    text.Vocabulary(["heart", "<pad>", "<eos>"])
  with pytest.raises(ValueError, match="at least 2"):
    vocab.encode("heart", 1)
