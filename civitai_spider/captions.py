"""Training captions from prompts: the text kohya-ss, OneTrainer and SimpleTuner read beside an image.

A prompt as Civitai passes it on is written in the syntax of the tool that made the image
(A1111, ComfyUI, Forge), which a captioned training set does not want. :func:`caption_of`
cleans it:

- extra-network tags go: ``<lora:name:0.8>``, ``<lyco:...>``, ``<hypernet:...>``;
- emphasis is unwrapped: ``(word)``, ``((word))``, ``(word:1.2)``, ``[word]``, ``{word}``;
- prompt editing and alternation keep their words: ``[from:to:0.5]`` -> ``from, to``,
  ``[to:10]`` -> ``to``, ``[from::10]`` -> ``from``, ``[a|b]`` -> ``a, b`` (the caption
  describes what the image may show, and it shows both);
- escaped brackets are literal text: ``yor briar \\(spy x family\\)`` -> ``yor briar (spy x family)``;
- ``BREAK`` and line breaks separate like commas; repeated commas and spaces collapse, and the
  caption starts and ends with neither.

Unbalanced brackets are dropped like balanced ones, so any text gives a caption.
"""

from __future__ import annotations

import re

# Escaped brackets stand in for themselves: hidden as private-use characters while the
# syntax goes, put back at the end.
_ESCAPES = {
    "\\(": "\ue000",
    "\\)": "\ue001",
    "\\[": "\ue002",
    "\\]": "\ue003",
    "\\{": "\ue004",
    "\\}": "\ue005",
}
_ESCAPED = re.compile(r"\\[()\[\]{}]")
_EXTRA_NETWORK = re.compile(r"<\s*[A-Za-z_][\w-]*\s*:[^<>]*>")
# A weight or a step just before a closing bracket: "(word:1.2)", "[a:b:0.5]", "[to:10]".
_WEIGHT = re.compile(r"\s*:\s*[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?=[)\]])")
# The separators left inside an innermost [...] or {...}: prompt editing, alternation.
_INNERMOST = re.compile(r"[\[{]([^\[\]{}]*)[\]}]")
_CHOICE = re.compile(r"\s*[:|]+\s*")
_BRACKETS = re.compile(r"[()\[\]{}]")
_BREAK = re.compile(r"\bBREAK\b")


def caption_of(prompt: object, *, raw: bool = False) -> str:
    """The caption for ``prompt``: cleaned (see the module), or as received with ``raw``.

    Anything but a string (no prompt, junk in the record) gives an empty caption.
    """
    if not isinstance(prompt, str):
        return ""
    if raw:
        return prompt
    escaped = "\\" in prompt
    text = _ESCAPED.sub(lambda match: _ESCAPES[match[0]], prompt) if escaped else prompt
    text = _EXTRA_NETWORK.sub(",", text)
    text = _WEIGHT.sub("", text)
    while True:  # innermost first: "[a:[b|c]:0.5]"
        unwrapped = _INNERMOST.sub(lambda match: f" {_CHOICE.sub(', ', match[1])} ", text)
        if unwrapped == text:
            break
        text = unwrapped
    text = _BRACKETS.sub(" ", text)
    if "BREAK" in text:  # the search with its word boundaries costs more than the test
        text = _BREAK.sub(",", text)
    # Line breaks separate like commas. Then one comma and one space between the parts, one
    # space between words, none at the ends.
    parts = (" ".join(part.split()) for part in text.replace("\r", ",").replace("\n", ",").split(","))
    text = ", ".join(part for part in parts if part)
    if escaped:
        for escape, hidden in _ESCAPES.items():
            text = text.replace(hidden, escape[1])
    return text
