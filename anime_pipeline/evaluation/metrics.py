"""Caption metrics: BLEU (sacrebleu), ROUGE-L (rouge-score), CIDEr-D (pure Python) and a content score.

Every metric takes parallel lists of hypotheses and references (one reference string per item, or a list of
reference strings for CIDEr), raises ValueError when the lengths differ, and scores an empty hypothesis as 0.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import sacrebleu

from anime_pipeline.demo import demo_title


def _check_lengths(hyps: Sequence, refs: Sequence, what: str = "refs") -> None:
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError("pass lists of strings, not a single string")
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} {what}; they must be parallel lists")


def _text(s: str | None) -> str:
    return "" if s is None else str(s)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")


def clean_caption(text: str | None) -> str:
    """A generated caption fit to store and show: control characters (e.g. U+0018 from a byte-level BPE
    decoding a stray byte) and U+FFFD replacement characters removed, runs of whitespace collapsed (tabs and
    newlines become spaces), ends stripped."""
    return " ".join(_CONTROL.sub("", _text(text)).split())


# ---------------------------------------------------------------------------------------------------- BLEU


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (0..100, default 13a tokenizer) with one reference per hypothesis."""
    _check_lengths(hyps, refs)
    if not hyps:
        return 0.0
    return float(sacrebleu.corpus_bleu([_text(h) for h in hyps], [[_text(r) for r in refs]]).score)


def sentence_bleu(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """sacrebleu sentence BLEU per item (effective order, 0..100)."""
    _check_lengths(hyps, refs)
    return [float(sacrebleu.sentence_bleu(_text(h), [_text(r)]).score) for h, r in zip(hyps, refs)]


# ---------------------------------------------------------------------------------------------------- ROUGE-L


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(hyps: Sequence[str], refs: Sequence[str], *, use_stemmer: bool = True) -> list[float]:
    """ROUGE-L F-measure per (hypothesis, reference) pair, 0..1 (rouge-score's tokenizer, Porter stemmer)."""
    _check_lengths(hyps, refs)
    scorer = _rouge_scorer(use_stemmer)
    # rouge-score's signature is score(target, prediction)
    return [float(scorer.score(_text(r), _text(h))["rougeL"].fmeasure) for h, r in zip(hyps, refs)]


def mean_rouge_l(hyps: Sequence[str], refs: Sequence[str], *, use_stemmer: bool = True) -> float:
    scores = rouge_l(hyps, refs, use_stemmer=use_stemmer)
    return sum(scores) / len(scores) if scores else 0.0


# ---------------------------------------------------------------------------------------------------- CIDEr-D

_WORD = re.compile(r"\w+", re.UNICODE)


def cider_tokenize(text: str | None) -> list[str]:
    """Lower-case word tokens with punctuation dropped.

    Stands in for the PTB tokenizer (Java) that the COCO toolkit runs before CIDEr: text that is already lower
    case and space separated without punctuation tokenizes to its own `split()`.
    """
    return _WORD.findall(_text(text).lower())


def _ngram_counts(words: list[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def cider(
    hyps: Sequence[str],
    refs: Sequence[str | Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, list[float]]:
    """CIDEr-D as computed by pycocoevalcap's `CiderScorer` (corpus mean, per-item scores).

    Per item: tf-idf vectors of 1..n-grams (idf = log(#items) - log(max(1, document frequency)), document
    frequency counted over the items' reference sets), clipped cosine similarity per n, a Gaussian length
    penalty exp(-delta²/2σ²), mean over n, mean over references, × 10. Like the reference implementation the
    length is counted in bigrams (its `if n == 1` quirk), which equals word count − 1 for non-empty texts.
    idf comes from the references of the scored corpus, so a corpus of one item scores 0 (log 1 = 0).

    `refs[i]` is one reference string or a list of them. An empty hypothesis scores 0.
    """
    _check_lengths(hyps, refs)
    if not hyps:
        return 0.0, []
    ref_sets: list[list[str]] = [[r] if isinstance(r, str) or r is None else list(r) for r in refs]
    for i, rs in enumerate(ref_sets):
        if not rs:
            raise ValueError(f"item {i} has no reference")

    ctest = [_ngram_counts(cider_tokenize(h), n) for h in hyps]
    crefs = [[_ngram_counts(cider_tokenize(r), n) for r in rs] for rs in ref_sets]

    doc_freq: Counter = Counter()
    for ref_counts in crefs:
        doc_freq.update({g for r in ref_counts for g in r})
    ref_len = math.log(float(len(crefs)))

    def vectorize(cnts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in cnts.items():
            k = len(gram) - 1
            w = float(tf) * (ref_len - math.log(max(1.0, doc_freq.get(gram, 0))))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:  # reference quirk: length in bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def sim(vh, nh, lh, vr, nr, lr) -> list[float]:
        penalty = math.exp(-(float(lh - lr) ** 2) / (2 * sigma**2))
        out = []
        for k in range(n):
            val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                val /= nh[k] * nr[k]
            out.append(val * penalty)
        return out

    scores = []
    for test, ref_counts in zip(ctest, crefs):
        vh, nh, lh = vectorize(test)
        total = [0.0] * n
        for rc in ref_counts:
            vr, nr, lr = vectorize(rc)
            total = [a + b for a, b in zip(total, sim(vh, nh, lh, vr, nr, lr))]
        scores.append(float(sum(total) / n / len(ref_counts) * 10.0))
    return float(sum(scores) / len(scores)), scores


# ---------------------------------------------------------------------------------------------------- content


def _names_in_order(text: str, terms: Sequence[str]) -> bool:
    """Every term occurs as a whole word (case-insensitive), each one after the previous term's match."""
    pos = 0
    for t in terms:
        m = re.compile(rf"(?<!\w){re.escape(t)}(?!\w)", flags=re.IGNORECASE).search(text, pos)
        if m is None:
            return False
        pos = m.end()
    return True


def content_score(
    hyps: Sequence[str], expected_terms: Sequence[Sequence[str]]
) -> tuple[float | None, list[bool | None]]:
    """Fraction of captions that name ALL of their expected terms in the given order (whole words,
    case-insensitive): for the demo, the first scene's colour and then the second's, so a caption with the
    colours reversed scores 0.

    Items whose term list is empty are not scorable: their per-item value is None and they are left out of
    the fraction. The fraction is None when no item is scorable (there is nothing to measure, which is not 0).
    """
    _check_lengths(hyps, expected_terms, "expected term lists")
    per_item: list[bool | None] = []
    for h, terms in zip(hyps, expected_terms):
        terms = [t for t in terms if t and t.strip()]
        per_item.append(_names_in_order(_text(h), terms) if terms else None)
    scored = [x for x in per_item if x is not None]
    return (sum(scored) / len(scored) if scored else None), per_item


def demo_expected_terms(mal_id: int) -> list[str]:
    """The two scene colours (in order) of a demo title; [] for any MAL id that is not a demo title."""
    try:
        title = demo_title(int(mal_id))
    except KeyError:
        return []
    return [scene.colour for scene in title.scenes]


# ---------------------------------------------------------------------------------------------------- all together


@dataclass(frozen=True)
class CaptionScores:
    bleu: float  # corpus BLEU, 0..100
    rouge_l: float  # mean ROUGE-L F, 0..1
    cider: float  # corpus CIDEr-D (mean of items)
    content: float | None  # fraction naming all expected terms; None when no item has terms
    per_item: list[dict]  # one dict per item: sentence_bleu, rouge_l, cider, content

    def summary(self) -> dict[str, float | None]:
        return {"bleu": self.bleu, "rouge_l": self.rouge_l, "cider": self.cider, "content": self.content}


def score_captions(
    hyps: Sequence[str], refs: Sequence[str], expected_terms: Sequence[Sequence[str]] | None = None
) -> CaptionScores:
    """All metrics at once, with per-item rows ready for a captions table."""
    _check_lengths(hyps, refs)
    terms = expected_terms if expected_terms is not None else [[] for _ in hyps]
    s_bleu = sentence_bleu(hyps, refs)
    r_l = rouge_l(hyps, refs)
    c_mean, c_items = cider(hyps, refs)
    content, c_flags = content_score(hyps, terms)
    per_item = [
        {"sentence_bleu": b, "rouge_l": r, "cider": c, "content": f}
        for b, r, c, f in zip(s_bleu, r_l, c_items, c_flags)
    ]
    return CaptionScores(
        bleu=bleu(hyps, refs),
        rouge_l=sum(r_l) / len(r_l) if r_l else 0.0,
        cider=c_mean,
        content=content,
        per_item=per_item,
    )
