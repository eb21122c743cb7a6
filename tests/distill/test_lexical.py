import math

import pytest
import torch

from distill.lexical import LexicalLabels, words

CAPTIONS = [  # two images, two captions each
    "A dog runs on the grass.", "a brown dog on grass", "A cat sleeps on a sofa", "the cat on the red sofa",
]


def test_words_are_distinct_lowercase_tokens():
    assert words("A dog, a DOG and a cat!") == ["a", "dog", "and", "cat"]


def test_labels_count_the_idf_weighted_words_other_captions_of_the_image_share():
    labels = LexicalLabels(CAPTIONS, captions_per_image=2)
    idf = {w: float(labels.idf[labels.vocab[w]]) for w in labels.vocab}
    assert idf["on"] == pytest.approx(0.0)  # in every caption: says nothing
    got = labels(torch.tensor([0, 1]), torch.arange(4))
    assert got.shape == (2, 4) and got.dtype == torch.float32
    # caption 0 against its own image: only caption 1 counts ("a", "dog", "on", "grass"; not "runs", "the")
    own = sum(idf[w] for w in ("a", "dog", "on", "grass")) / sum(idf[w] for w in words(CAPTIONS[0]))
    assert float(got[0, 0]) == pytest.approx(own)
    # caption 0 against image 1: "a" (caption 2) and "the" (caption 3) are shared, no content word
    other = sum(idf[w] for w in ("a", "the", "on")) / sum(idf[w] for w in words(CAPTIONS[0]))
    assert float(got[1, 0]) == pytest.approx(other) and float(got[1, 0]) < float(got[0, 0])
    # caption 3 ("the cat on the red sofa"): image 1's other caption confirms cat and sofa
    assert float(got[1, 3]) > float(got[0, 3])
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0


def test_a_caption_without_informative_words_scores_zero():
    labels = LexicalLabels(["on", "on", "on", "on"], captions_per_image=2)
    assert labels(torch.tensor([0, 1]), torch.arange(4)).abs().sum() == 0
    assert not math.isnan(float(labels(torch.tensor([0]), torch.tensor([1]))[0, 0]))
