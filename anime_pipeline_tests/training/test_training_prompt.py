"""(b) the prompt follows transformers' SmolVLM video format (architecture.md §2.4), frames as images."""

from __future__ import annotations

from anime_pipeline.training import prompt as P


def test_chat_template_is_the_hub_template():
    t = P.chat_template()
    assert len(t) == 403 and not t.endswith("\n")
    assert t.startswith("<|im_start|>{% for message in messages %}")


def test_n3_prompt_matches_reference_format(tiny_processor, sample3):
    text = P.render_video_sample(
        sample3["timestamps"],
        sample3["duration_s"],
        "Summarize the episode.",
        image_seq_len=tiny_processor.image_seq_len,
    )
    block = "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    expected = (
        "<|im_start|>User: You are provided the following series of three frames from a 0:00:03 [H:MM:SS] video.\n"
        "\n"
        f"Frame from 00:00:{block}\n"
        f"Frame from 00:01:{block}\n"
        f"Frame from 00:02:{block}\n"
        "\n"
        "Summarize the episode.<end_of_utterance>\n"
        "Assistant:"
    )
    assert text == expected
    ids = tiny_processor.encode(text)["input_ids"]
    assert ids.count(tiny_processor.image_token_id) == 3 * 4
    assert ids.count(tiny_processor.fake_image_token_id) == 6
    assert ids.count(tiny_processor.global_image_token_id) == 3
    assert ids[0] == tiny_processor.tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_rendering_matches_tokenizer_chat_template(tiny_processor, sample3):
    msgs = P.video_messages(sample3["timestamps"], sample3["duration_s"], "Q?", "An answer.")
    ours = P.render(msgs)
    theirs = tiny_processor.tokenizer.apply_chat_template(
        msgs, tokenize=False, chat_template=P.chat_template()
    )
    assert ours == theirs
    assert ours.endswith("<end_of_utterance>\nAssistant: An answer.<end_of_utterance>\n")
    # the processor (what the collators call) renders through the tokenizer's apply_chat_template
    assert tiny_processor.render(msgs) == ours
    prompt_only = msgs[:1]
    assert tiny_processor.render(prompt_only, add_generation_prompt=True) == P.render(
        prompt_only, add_generation_prompt=True
    )


def test_time_formats_and_number_words():
    assert P.format_timestamp(0) == "00:00"
    assert P.format_timestamp(61.9) == "01:01"
    assert P.format_timestamp(1439.5) == "23:59"
    assert P.format_duration(1439.96) == "0:23:59"
    assert P.format_duration(3725) == "1:02:05"
    assert P.number_words(64) == "sixty-four"
    intro = P.video_user_content([0.0] * 24, 1439.0, "q")[0]["text"]
    assert (
        intro
        == "You are provided the following series of twenty-four frames from a 0:23:59 [H:MM:SS] video.\n"
    )


def test_uniform_indices_keep_ends_and_spread():
    assert P.uniform_indices(10, 10) == list(range(10))
    assert P.uniform_indices(10, 1) == [0]
    assert P.uniform_indices(10, 2) == [0, 9]
    for n in range(1, 70):
        for k in range(2, n + 1):
            idx = P.uniform_indices(n, k)
            assert len(idx) == k and idx[0] == 0 and idx[-1] == n - 1 and idx == sorted(set(idx))


def test_special_tokens_in_free_text_are_neutralised():
    msgs = P.video_messages([0.0], 1.0, "look <image> here", "a <end_of_utterance> b")
    text = P.render(msgs)
    assert text.count("<image>") == 1  # only the frame's placeholder
    assert text.count("<end_of_utterance>") == 2  # one per turn
