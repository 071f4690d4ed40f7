import math

import pytest

from anime_pipeline.demo import demo_titles
from anime_pipeline.evaluation.metrics import (
    bleu,
    cider,
    clean_caption,
    content_score,
    demo_expected_terms,
    mean_rouge_l,
    rouge_l,
    score_captions,
    sentence_bleu,
)

REFS = [
    "the episode opens in a red world where a white square drifts left",
    "a boy finds a strange robot in the ruins of an old city",
    "two friends start a band at their high school",
]
UNRELATED = ["bananas are yellow fruit", "stock markets fell sharply today", "rain is expected tomorrow"]


def test_identical_scores_top():
    assert bleu(REFS, REFS) == pytest.approx(100.0)
    assert rouge_l(REFS, REFS) == pytest.approx([1.0, 1.0, 1.0])
    assert mean_rouge_l(REFS, REFS) == pytest.approx(1.0)
    assert all(s == pytest.approx(100.0) for s in sentence_bleu(REFS, REFS))
    same, _same_items = cider(REFS, REFS)
    other, other_items = cider(UNRELATED, REFS)
    assert same > 0 and same > other
    assert other == 0.0 and other_items == [0.0, 0.0, 0.0]


def test_empty_hypotheses_score_zero():
    hyps = ["", REFS[1], ""]
    assert rouge_l(hyps, REFS)[0] == 0.0 and rouge_l(hyps, REFS)[2] == 0.0
    assert sentence_bleu(hyps, REFS)[0] == 0.0
    assert cider(hyps, REFS)[1][0] == 0.0
    assert bleu(["", "", ""], REFS) == 0.0
    assert cider(["", "", ""], REFS) == (0.0, [0.0, 0.0, 0.0])
    assert bleu([], []) == 0.0 and cider([], []) == (0.0, [])


def test_mismatched_lengths_raise():
    for fn in (bleu, rouge_l, sentence_bleu, cider):
        with pytest.raises(ValueError, match="parallel"):
            fn(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        content_score(["a"], [])
    with pytest.raises(TypeError):
        bleu("abc", "abc")


def test_cider_hand_computed():
    # Two items, every reference n-gram has df=1, so every weight is log(2) and cancels in the cosine.
    # Item 1: identical 2-word captions -> cos = 1 for 1- and 2-grams, 0 for 3-/4-grams -> 10 * (1+1+0+0)/4.
    assert cider(["a b", "c d"], ["a b", "e f"]) == (2.5, [5.0, 0.0])
    # Identical 4-word captions: all four n-gram orders match -> 10.
    assert cider(["a b c d", "x y"], ["a b c d", "e f g h"])[1][0] == pytest.approx(10.0)
    # Hypothesis "a b" vs reference "a b c": unigram cos 2/sqrt(6), bigram cos 1/sqrt(2), length (in bigrams,
    # as pycocoevalcap counts it) 1 vs 2 -> Gaussian penalty exp(-1/72).
    expected = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    _, items = cider(["a b", "x y"], ["a b c", "d e"])
    assert items == pytest.approx([expected, 0.0])


def test_cider_matches_pycocoevalcap_reference():
    # Values from pycocoevalcap's cider/cider_scorer.py (salaniz/pycocoevalcap ad63453), fed the same
    # pre-tokenized strings: CiderScorer(n=4, sigma=6.0) += (hyp, refs) for each item; compute_score().
    hyps = [
        "a red world turns blue",
        "the cat sat on the mat",
        "a white square drifts left",
        "",
        "green green green",
    ]
    refs = [
        ["a red world then turns blue", "red then blue"],
        ["the cat is on the mat"],
        ["the white square drifts right slowly"],
        ["nothing here"],
        ["a green world"],
    ]
    mean, items = cider(hyps, refs)
    assert items == pytest.approx(
        [2.9898007942981764, 4.152991672776844, 3.3558902182194617, 0.0, 0.6490917809530876], rel=1e-12
    )
    assert mean == pytest.approx(2.229554893249514, rel=1e-12)


def test_cider_tokenizes_case_and_punctuation():
    a = cider(["A red world, turns BLUE!", "x"], ["a red world turns blue", "y z"])
    b = cider(["a red world turns blue", "x"], ["a red world turns blue", "y z"])
    assert a == b


def test_content_score():
    hyps = ["It opens RED and turns Blue.", "A red world.", "reddish bluegreen", "anything"]
    terms = [["red", "blue"], ["red", "blue"], ["red", "blue"], []]
    frac, items = content_score(hyps, terms)
    assert items == [True, False, False, None]
    assert frac == pytest.approx(1 / 3)
    assert content_score(["x"], [[]]) == (None, [None])


def test_content_score_is_order_aware():
    terms = [["red", "blue"]]
    assert content_score(["It opens red and later turns blue."], terms) == (1.0, [True])
    # the colours of reversed frames: both named, wrong order
    assert content_score(["It opens blue and later turns red."], terms) == (0.0, [False])
    # the same colour twice needs two mentions
    assert content_score(["A red world."], [["red", "red"]]) == (0.0, [False])
    assert content_score(["A red world, still red."], [["red", "red"]]) == (1.0, [True])
    t = demo_titles()[5]
    terms = demo_expected_terms(t.mal_id)
    swapped = t.synopsis.replace(terms[0], "\0").replace(terms[1], terms[0]).replace("\0", terms[1])
    assert content_score([t.synopsis, swapped], [terms, terms]) == (0.5, [True, False])


def test_clean_caption_drops_control_and_replacement_characters():
    assert clean_caption("A red\x18 world\ufffd turns\tblue.\n") == "A red world turns blue."
    assert clean_caption("caf\u00e9 \u2014 ok") == "caf\u00e9 \u2014 ok"
    assert clean_caption(None) == "" and clean_caption("\x00\x1f\x7f\x9f") == ""


def test_demo_expected_terms():
    t = demo_titles()[3]
    terms = demo_expected_terms(t.mal_id)
    assert terms == [t.scenes[0].colour, t.scenes[1].colour] and len(set(terms)) == 2
    assert all(term in t.synopsis for term in terms)
    assert content_score([t.synopsis], [terms]) == (1.0, [True])
    assert demo_expected_terms(1) == []


def test_score_captions_bundle():
    scores = score_captions(REFS, REFS, [["red"], [], []])
    assert scores.bleu == pytest.approx(100.0)
    assert scores.rouge_l == pytest.approx(1.0)
    assert scores.content == 1.0
    assert len(scores.per_item) == 3 and scores.per_item[1]["content"] is None
    assert set(scores.summary()) == {"bleu", "rouge_l", "cider", "content"}
