from anime_pipeline.dataset.prompt import INSTRUCTION, build_prompt


def test_full_prompt():
    assert (
        build_prompt(["Action", "Drama"], ["A", "B"])
        == "Genres: Action, Drama. Main characters: A, B. Write the synopsis of this first episode."
    )


def test_empty_lists_drop_their_sentence():
    assert build_prompt([], []) == INSTRUCTION
    assert build_prompt(None, None) == INSTRUCTION
    assert build_prompt(["Comedy"], []) == f"Genres: Comedy. {INSTRUCTION}"
    assert build_prompt([], ["Mei Sato"]) == f"Main characters: Mei Sato. {INSTRUCTION}"


def test_cleans_blanks_duplicates_and_whitespace_keeping_order():
    assert build_prompt(["  Drama ", "", None, "Drama", "Action"], ["B  C", "A"]) == (
        f"Genres: Drama, Action. Main characters: B C, A. {INSTRUCTION}"
    )


def test_deterministic():
    assert build_prompt(["x", "y"], ["z"]) == build_prompt(("x", "y"), ("z",))
