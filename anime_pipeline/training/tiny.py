"""A tiny, random-init model with SmolVLM2's architecture, for the demo profile and the tests.

Follows architecture.md's tiny recipe: SigLIP-style vision tower at 64 px with 8 px patches and the real
pixel-shuffle factor 4 → (64/8)²/4² = 4 `<image>` tokens per frame; a 2-layer Llama text model with GQA;
an untied LM head. The tokenizer is a small byte-level BPE (digits split individually, like SmolLM2)
trained on the demo vocabulary plus common English words, carrying the real special tokens by name
(`<|im_start|>`, `<end_of_utterance>`, `<image>`, `<fake_token_around_image>`, `<global-img>`, the 36
`<row_r_col_c>` tokens, ...) and the real chat template. Image processing is frame-style:
`do_image_splitting=False`, `max_image_size = size = 64`.

Everything is written into a temp dir next to `dest` and renamed into place, so a reader sees either no
model or a complete one. A marker file (`tiny_model.json`) records the spec fingerprint; a directory
with the same fingerprint is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from anime_pipeline.training import prompt as P

MARKER = "tiny_model.json"
SPEC_VERSION = 2
SEED = 1234

IMAGE_SIZE = 64
PATCH_SIZE = 8
SCALE_FACTOR = 4
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 4

VISION = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
)
TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=4096,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
)
BPE_VOCAB = 1500  # target size of the trained BPE before the special tokens are added

_COMMON_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "i",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "so",
    "no",
    "will",
    "more",
    "can",
    "who",
    "out",
    "about",
    "up",
    "into",
    "them",
    "some",
    "than",
    "its",
    "time",
    "two",
    "then",
    "first",
    "new",
    "only",
    "these",
    "also",
    "after",
    "other",
    "people",
    "could",
    "any",
    "over",
    "very",
    "what",
    "most",
    "where",
    "made",
    "our",
    "my",
    "many",
    "before",
    "such",
    "must",
    "through",
    "back",
    "years",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "how",
    "too",
    "little",
    "state",
    "good",
    "world",
    "very",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "himself",
    "few",
    "house",
    "use",
    "during",
    "without",
    "again",
    "place",
    "around",
    "however",
    "home",
    "small",
    "found",
    "thought",
    "went",
    "say",
    "part",
    "once",
    "general",
    "high",
    "upon",
    "school",
    "every",
    "don",
    "does",
    "got",
    "united",
    "left",
    "number",
    "course",
    "war",
    "until",
    "always",
    "away",
    "something",
    "fact",
    "though",
    "water",
    "less",
    "public",
    "put",
    "think",
    "almost",
    "hand",
    "enough",
    "far",
    "took",
    "head",
    "yet",
    "government",
    "system",
    "better",
    "set",
    "told",
    "nothing",
    "night",
    "end",
    "why",
    "called",
    "didn",
    "eyes",
    "find",
    "going",
    "look",
    "asked",
    "later",
    "knew",
    "point",
    "next",
    "city",
    "give",
    "group",
    "toward",
    "young",
    "let",
    "room",
    "president",
    "side",
    "social",
    "given",
    "present",
    "several",
    "order",
    "national",
    "possible",
    "rather",
    "second",
    "face",
    "per",
    "among",
    "form",
    "often",
    "early",
    "important",
    "things",
    "looked",
    "white",
    "large",
    "big",
    "case",
    "become",
    "felt",
    "children",
    "began",
    "others",
    "need",
    "open",
    "family",
    "young",
    "girl",
    "boy",
    "friend",
    "friends",
    "school",
    "student",
    "students",
    "teacher",
    "town",
    "village",
    "forest",
    "sea",
    "ocean",
    "sky",
    "city",
    "kingdom",
    "story",
    "stories",
    "episode",
    "episodes",
    "series",
    "season",
    "anime",
    "manga",
    "hero",
    "heroes",
    "villain",
    "power",
    "powers",
    "magic",
    "sword",
    "battle",
    "fight",
    "fights",
    "journey",
    "secret",
    "secrets",
    "mystery",
    "mysteries",
    "love",
    "romance",
    "comedy",
    "drama",
    "action",
    "adventure",
    "fantasy",
    "horror",
    "dream",
    "dreams",
    "future",
    "past",
    "memory",
    "memories",
    "lost",
    "found",
    "strange",
    "mysterious",
    "ancient",
    "dark",
    "light",
    "shadow",
    "shadows",
    "together",
    "alone",
    "against",
    "help",
    "save",
    "saves",
    "saved",
    "meets",
    "meet",
    "meeting",
    "decides",
    "decided",
    "discovers",
    "discover",
    "begins",
    "starts",
    "start",
    "ends",
    "ending",
    "finally",
    "suddenly",
    "soon",
    "must",
    "wants",
    "want",
    "tries",
    "try",
    "learns",
    "learn",
    "becomes",
    "returns",
    "return",
    "team",
    "club",
    "contest",
    "tournament",
    "match",
    "game",
    "games",
    "robot",
    "robots",
    "space",
    "planet",
    "earth",
    "war",
    "wars",
    "demon",
    "demons",
    "spirit",
    "spirits",
    "god",
    "gods",
    "king",
    "queen",
    "prince",
    "princess",
    "father",
    "mother",
    "brother",
    "sister",
    "daughter",
    "son",
    "parents",
    "family",
    "classmate",
    "classmates",
    "rival",
    "rivals",
    "mission",
    "missions",
    "world",
    "worlds",
    "life",
    "lives",
    "death",
    "live",
    "dies",
    "living",
    "human",
    "humans",
    "monster",
    "monsters",
    "school",
    "high",
    "middle",
    "academy",
    "university",
    "company",
    "job",
    "work",
    "works",
    "worker",
    "he",
    "she",
    "they",
    "him",
    "her",
    "their",
    "his",
    "hers",
    "its",
    "it",
    "them",
    "who",
    "whom",
    "whose",
    "what",
    "which",
    "when",
    "where",
    "why",
    "how",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "has",
    "have",
    "had",
    "do",
    "does",
    "did",
    "will",
    "would",
    "can",
    "could",
    "shall",
    "should",
    "may",
    "might",
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "some",
    "any",
    "each",
    "every",
    "no",
    "all",
    "both",
    "either",
    "neither",
    "in",
    "on",
    "at",
    "by",
    "for",
    "with",
    "about",
    "against",
    "between",
    "into",
    "through",
    "during",
    "before",
    "after",
    "above",
    "below",
    "to",
    "from",
    "up",
    "down",
    "out",
    "over",
    "under",
    "again",
    "further",
    "then",
    "once",
    "here",
    "there",
    "when",
    "where",
    "why",
    "how",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "cyan",
    "white",
    "black",
    "orange",
    "pink",
    "brown",
    "gray",
    "grey",
    "gold",
    "silver",
    "colour",
    "color",
    "colours",
    "opens",
    "opened",
    "open",
    "turns",
    "turned",
    "turn",
    "drifts",
    "drifting",
    "drift",
    "moves",
    "moving",
    "move",
    "square",
    "squares",
    "circle",
    "scene",
    "scenes",
    "watch",
    "watches",
    "watched",
    "everything",
    "later",
    "left",
    "right",
    "world",
    "worlds",
    "summarize",
    "summarise",
    "describe",
    "description",
    "caption",
    "synopsis",
    "plot",
    "title",
    "titles",
    "genre",
    "genres",
    "character",
    "characters",
    "main",
    "name",
    "names",
    "first",
    "episode",
    "video",
    "frames",
    "frame",
    "following",
    "series",
    "provided",
    "answer",
    "question",
]

_PROMPT_LINES = [
    "Summarize the first episode.",
    "Describe what happens in this episode.",
    "Write a synopsis for the first episode of this anime.",
    "Title: {name}. Genres: {genres}. Main characters: {chars}.",
    "Anime: {name} ({english}). Genres: {genres}. Characters: {chars}. Write the synopsis of episode 1.",
]


def default_corpus() -> list[str]:
    """Demo synopses/prompts, the video-prompt text and common English words."""
    from anime_pipeline.demo import DIRECTIONS, PALETTE, demo_titles

    lines: list[str] = []
    for t in demo_titles():
        lines.append(t.synopsis)
        for tmpl in _PROMPT_LINES:
            lines.append(
                tmpl.format(
                    name=t.name,
                    english=t.name_english,
                    genres=", ".join(t.genres),
                    chars=", ".join(t.main_characters),
                )
            )
    for c1 in PALETTE:
        for c2 in PALETTE:
            for d in DIRECTIONS:
                lines.append(
                    f"The episode opens in a {c1} world where a white square drifts {d}. "
                    f"Later everything turns {c2} and the square drifts {d}."
                )
    for n in range(1, 65):
        lines.append(
            P.VIDEO_INTRO.format(frame_count=P.number_words(n), video_duration=P.format_duration(n * 23))
        )
        lines.append(P.FRAME_TIMESTAMP.format(timestamp=P.format_timestamp(n * 22.5)))
    lines.append("User: Assistant: System:")
    words = list(dict.fromkeys(_COMMON_WORDS))
    for i in range(0, len(words), 12):
        chunk = words[i : i + 12]
        lines.append(" ".join(chunk))
        lines.append(" ".join(w.capitalize() for w in chunk) + ".")
    return lines


def _fingerprint(corpus: list[str]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "v": SPEC_VERSION,
                "seed": SEED,
                "vision": VISION,
                "text": TEXT,
                "bpe": BPE_VOCAB,
                "scale": SCALE_FACTOR,
                "template": P.chat_template(),
            },
            sort_keys=True,
        ).encode()
    )
    for line in corpus:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def is_complete(dest: Path, fingerprint: str | None = None) -> bool:
    dest = Path(dest)
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    needed = (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template.jinja",
    )
    if not all((dest / f).is_file() for f in needed):
        return False
    return fingerprint is None or marker.get("fingerprint") == fingerprint


def build_tokenizer(corpus: list[str]):
    """Byte-level BPE with individually split digits (like SmolLM2) and the real special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=[P.UNK_TOKEN, P.BOS_TOKEN, P.PAD_TOKEN],  # ids 0, 1, 2 as in SmolLM2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # Image tokens then <end_of_utterance>, in the real model's order (ids differ, names match).
    extra = [P.GLOBAL_IMAGE_TOKEN, *P.ROW_COL_TOKENS, P.FAKE_IMAGE_TOKEN, P.IMAGE_TOKEN, P.END_OF_UTTERANCE]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in extra])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=P.BOS_TOKEN,
        eos_token=P.END_OF_UTTERANCE,
        pad_token=P.PAD_TOKEN,
        unk_token=P.UNK_TOKEN,
        extra_special_tokens={
            "image_token": P.IMAGE_TOKEN,
            "fake_image_token": P.FAKE_IMAGE_TOKEN,
            "global_image_token": P.GLOBAL_IMAGE_TOKEN,
            "end_of_utterance_token": P.END_OF_UTTERANCE,
        },
        model_max_length=TEXT["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = P.chat_template()
    return fast


def _build_into(tmp: Path, corpus: list[str], fingerprint: str) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig, SmolVLMConfig
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    tokenizer = build_tokenizer(corpus)
    vocab = len(tokenizer)
    vocab = (vocab + 63) // 64 * 64  # pad like the real model (multiple of 128 there)
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in (P.IMAGE_TOKEN, P.END_OF_UTTERANCE, P.PAD_TOKEN, P.BOS_TOKEN)
    }
    config = SmolVLMConfig(
        vision_config=dict(VISION),
        text_config=dict(
            model_type="llama",
            vocab_size=vocab,
            pad_token_id=ids[P.PAD_TOKEN],
            bos_token_id=ids[P.BOS_TOKEN],
            eos_token_id=ids[P.END_OF_UTTERANCE],
            tie_word_embeddings=False,
            **TEXT,
        ),
        scale_factor=SCALE_FACTOR,
        image_token_id=ids[P.IMAGE_TOKEN],
        tie_word_embeddings=False,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        # A random LM head with the default std 0.02 caps |logit| near 0.02·d (≈2.6 for d=128), so no
        # frozen-head adapter could ever make a token likely (loss floor ≈ ln(vocab) − 2.6). Re-draw
        # it with std 1/sqrt(d): random logits ~N(0, 1), reachable logits up to ~sqrt(d).
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, TEXT["hidden_size"] ** -0.5)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[P.BOS_TOKEN], eos_token_id=ids[P.END_OF_UTTERANCE], pad_token_id=ids[P.PAD_TOKEN]
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    improc = SmolVLMImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        resample=1,
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
        do_convert_rgb=True,
    )
    improc.save_pretrained(tmp)
    (tmp / "processor_config.json").write_text(
        json.dumps({"image_seq_len": IMAGE_SEQ_LEN, "processor_class": "SmolVLMProcessor"}, indent=2)
    )
    (tmp / "chat_template.jinja").write_text(P.chat_template(), encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "spec_version": SPEC_VERSION,
                "seed": SEED,
                "parameters": n_params,
                "vocab_size": vocab,
                "image_seq_len": IMAGE_SEQ_LEN,
                "image_size": IMAGE_SIZE,
            },
            indent=2,
        )
    )


def build_tiny_model(dest: Path, *, corpus: list[str] | None = None) -> Path:
    """Build (or reuse) the tiny model at `dest`; returns `dest`.

    Idempotent: a complete model with the same spec fingerprint is left untouched. Built in a temp dir
    beside `dest` and renamed into place.
    """
    dest = Path(dest)
    corpus = list(corpus) if corpus is not None else default_corpus()
    fp = _fingerprint(corpus)
    if is_complete(dest, fp):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        _build_into(tmp, corpus, fp)
        if dest.exists():
            if is_complete(dest, fp):  # someone else finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return dest
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            if is_complete(dest, fp):  # a concurrent builder won the rename
                shutil.rmtree(tmp, ignore_errors=True)
                return dest
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
