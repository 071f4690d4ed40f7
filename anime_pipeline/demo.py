"""The embedded demo catalog: synthetic titles whose synopses describe what their generated episodes show.

Each demo episode has two scenes. A scene is a solid background colour with a small white square
moving left or right. The synopsis names the colours in order, so a model can only get the colours
right by looking at the frames (the prompt holds genres and characters, never colours).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

# Colour names are the words used in synopses; values are ffmpeg colour specs.
PALETTE = {
    "red": "0xD02020",
    "green": "0x20B030",
    "blue": "0x2040E0",
    "yellow": "0xF0E020",
    "purple": "0x8020C0",
    "cyan": "0x20D0E0",
}
DIRECTIONS = ("left", "right")
GENRE_POOL = (
    "Action",
    "Adventure",
    "Comedy",
    "Drama",
    "Fantasy",
    "Mystery",
    "Slice of Life",
    "Sci-Fi",
    "Sports",
)
FIRST_NAMES = ("Aoi", "Haru", "Kaito", "Mei", "Ren", "Sora", "Yuki", "Hina", "Riku", "Nao", "Emi", "Taro")
SURNAMES = ("Sato", "Suzuki", "Takahashi", "Tanaka", "Ito", "Watanabe", "Yamamoto", "Nakamura")
WORDS = (
    "Starlit",
    "Crimson",
    "Quiet",
    "Hidden",
    "Endless",
    "Paper",
    "Silver",
    "Northern",
    "Electric",
    "Hollow",
    "Summer",
    "Glass",
)
NOUNS = (
    "Garden",
    "Harbor",
    "Academy",
    "Frontier",
    "Signal",
    "Lantern",
    "Orbit",
    "Festival",
    "Archive",
    "Workshop",
    "Valley",
    "Railway",
)

DEMO_TITLE_COUNT = 24
DEMO_MAL_ID_BASE = 990_001


@dataclass(frozen=True)
class Scene:
    colour: str
    direction: str

    @property
    def ffmpeg_colour(self) -> str:
        return PALETTE[self.colour]


@dataclass(frozen=True)
class DemoTitle:
    mal_id: int
    name: str
    name_english: str
    name_native: str
    genres: tuple[str, ...]
    main_characters: tuple[str, ...]
    score: float
    rating: str
    popularity: int
    scenes: tuple[Scene, ...]

    @property
    def synopsis(self) -> str:
        first, second = self.scenes
        a, b = self.main_characters[:2]
        return (
            f"The episode opens in a {first.colour} world where a white square drifts {first.direction}. "
            f"Later everything turns {second.colour} and the square drifts {second.direction}. "
            f"{a} and {b} watch it together."
        )


def _pick(seq, key: str, salt: str):
    h = int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest(), 16)
    return seq[h % len(seq)]


def demo_titles(count: int = DEMO_TITLE_COUNT) -> list[DemoTitle]:
    """The bundled synthetic catalog (deterministic). Colour pairs cycle through every ordered pair."""
    pairs = [p for p in itertools.permutations(PALETTE, 2)]
    titles = []
    for i in range(count):
        mal_id = DEMO_MAL_ID_BASE + i
        key = str(mal_id)
        c1, c2 = pairs[(i * 7) % len(pairs)]
        d1 = DIRECTIONS[i % 2]
        d2 = DIRECTIONS[(i // 2) % 2]
        word, noun = WORDS[i % len(WORDS)], NOUNS[(i * 5) % len(NOUNS)]
        genres = tuple(sorted({_pick(GENRE_POOL, key, "g1"), _pick(GENRE_POOL, key, "g2")}))
        chars = (
            f"{_pick(FIRST_NAMES, key, 'c1')} {_pick(SURNAMES, key, 's1')}",
            f"{_pick(FIRST_NAMES, key, 'c2')} {_pick(SURNAMES, key, 's2')}",
        )
        if chars[0] == chars[1]:
            chars = (
                chars[0],
                f"{FIRST_NAMES[(i + 3) % len(FIRST_NAMES)]} {SURNAMES[(i + 1) % len(SURNAMES)]}",
            )
        titles.append(
            DemoTitle(
                mal_id=mal_id,
                name=f"{word} {noun}",
                name_english=f"The {word} {noun}",
                name_native=f"デモ{i + 1:02d}",
                genres=genres,
                main_characters=chars,
                score=round(7.0 + (i % 20) / 10, 1),
                rating="pg_13" if i % 3 else "pg",
                popularity=i + 1,
                scenes=(Scene(c1, d1), Scene(c2, d2)),
            )
        )
    return titles


def demo_title(mal_id: int) -> DemoTitle:
    for t in demo_titles():
        if t.mal_id == mal_id:
            return t
    raise KeyError(f"MAL id {mal_id} is not a demo title")
