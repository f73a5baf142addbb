"""Tests of :func:`caption_of`: real prompts' A1111, ComfyUI and Pony syntax, and what each becomes."""

from __future__ import annotations

import pytest

from civitai_spider.captions import caption_of

CLEANED = [
    # Pony / SDXL tag prompts as Civitai lists them.
    (
        "score_9, score_8_up, score_7_up, <lora:add-detail-xl:1.2>, (masterpiece:1.2), ((best quality)), "
        "1girl, [smile], yor briar \\(spy x family\\), BREAK red dress, night city",
        "score_9, score_8_up, score_7_up, masterpiece, best quality, 1girl, smile, "
        "yor briar (spy x family), red dress, night city",
    ),
    ("(masterpiece, best quality:1.2), 1girl, solo", "masterpiece, best quality, 1girl, solo"),
    ("( detailed eyes : 1.3 ), (smile:-0.5), (((sharp)))", "detailed eyes, smile, sharp"),
    ("<lora:detail_slider_v4:0.8:0.5>, <lyco:GoodHands-beta2:1.0>, <hypernet:anime:0.6>, cat", "cat"),
    ("<lora:Cute_Kitten>cat<lora:x:1>tea", "cat, tea"),
    ("{masterpiece}, {{best quality}}, [[[blurry]]]", "masterpiece, best quality, blurry"),
    # Prompt editing and alternation keep both sides.
    ("a photo of [cat:dog:0.5] in a garden", "a photo of cat, dog in a garden"),
    ("[snow:10], [rain::0.3], [red|blue] hair", "snow, rain, red, blue hair"),
    ("[[cat|dog]:bird:5]", "cat, dog, bird"),
    ("{sunny|rainy|foggy} day", "sunny, rainy, foggy day"),
    # Escaped brackets are text: characters named after their series.
    ("nahida \\(genshin impact\\), \\[oc\\], \\{sic\\}", "nahida (genshin impact), [oc], {sic}"),
    # Line breaks and BREAK separate like commas; BREAK inside a word does not.
    ("a castle on a hill\n\nstormy sky\r\nBREAK\nBREAKDANCE", "a castle on a hill, stormy sky, BREAKDANCE"),
    (",, a ,  b ,,, c ,  ", "a, b, c"),
    ("  leading and trailing spaces  ", "leading and trailing spaces"),
    # Natural-language prompts (Flux, SD3) pass through.
    (
        "A cinematic photo of an old fisherman mending nets at dawn, soft golden light.",
        "A cinematic photo of an old fisherman mending nets at dawn, soft golden light.",
    ),
    ("一只猫在茶杯里, (可爱:1.2), 猫耳メイド", "一只猫在茶杯里, 可爱, 猫耳メイド"),
    ("emoji 🐱🍵, (kawaii:1.1)", "emoji 🐱🍵, kawaii"),
    ("embedding:EasyNegative, worst quality", "embedding:EasyNegative, worst quality"),
    ("ratio 16:9, text: hello", "ratio 16:9, text: hello"),
    # Unbalanced brackets never crash and leave the words.
    ("(word:1.2", "word:1.2"),
    ("word), [[", "word"),
    ("((masterpiece), best quality:1.1", "masterpiece, best quality:1.1"),
    ("<lora:unclosed, cat", "<lora:unclosed, cat"),
    ("", ""),
    ("BREAK", ""),
    ("(:1.2), [], {}", ""),
]


@pytest.mark.parametrize(("prompt", "caption"), CLEANED)
def test_a_prompt_gives_its_cleaned_caption(prompt: str, caption: str) -> None:
    assert caption_of(prompt) == caption


@pytest.mark.parametrize("prompt", [prompt for prompt, _ in CLEANED])
def test_raw_keeps_the_prompt_as_received(prompt: str) -> None:
    assert caption_of(prompt, raw=True) == prompt


@pytest.mark.parametrize("junk", [None, 42, 1.5, True, ["a", "b"], {"prompt": "x"}])
def test_anything_but_text_is_an_empty_caption(junk: object) -> None:
    assert caption_of(junk) == "" and caption_of(junk, raw=True) == ""


def test_a_long_prompt_is_cleaned_whole() -> None:
    prompt = "(masterpiece:1.2), [detail], <lora:x:0.5>, " * 5000  # 220 KB
    assert caption_of(prompt) == ", ".join(["masterpiece, detail"] * 5000)
