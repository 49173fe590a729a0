"""Text cleaning steps, each switchable: strip HTML, NFC-normalise, drop control characters, fold whitespace."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from html.parser import HTMLParser

# Control characters (C0/C1 except tab and newline) and invisible format characters that only
# confuse tokenizers: zero-width space, BOM, bidi overrides.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}")
# Only real HTML element names count as markup, so `a < b`, `<|im_end|>` or `<T>` in code stay.
_HTML_HINT = re.compile(
    r"</?(?:a|abbr|b|blockquote|body|br|code|div|em|font|h[1-6]|head|hr|html|i|img|li|meta|ol|p|pre|"
    r"script|span|strong|style|table|tbody|td|th|thead|title|tr|u|ul)\b[^>]*>|&(?:[a-z]+|#\d+|#x[0-9a-f]+);",
    re.I,
)
_BLOCK_TAGS = {
    "p",
    "div",
    "br",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "table",
    "hr",
}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Remove HTML tags, scripts and styles, and decode entities; plain text passes unchanged."""
    if not _HTML_HINT.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def normalize_unicode(text: str) -> str:
    """NFC, so the same visible text always has the same code points (and tokens)."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def remove_control(text: str) -> str:
    """Drop control and invisible format characters; tabs and newlines stay."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def fold_whitespace(text: str) -> str:
    """Runs of spaces become one space, 3+ newlines become 2, ends are trimmed; line structure stays."""
    if _already_folded(text):
        return text  # most text is; substring checks cost far less than the regex pass
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _already_folded(text: str) -> bool:
    return (
        text.isascii()
        and "  " not in text
        and "\t" not in text
        and " \n" not in text
        and "\n " not in text
        and "\n\n\n" not in text
        and text == text.strip()
    )


STEPS: dict[str, Callable[[str], str]] = {
    "html": strip_html,
    "unicode": normalize_unicode,
    "control": remove_control,
    "whitespace": fold_whitespace,
}


def make_cleaner(enabled: dict[str, bool]) -> Callable[[str], str] | None:
    """One function applying the enabled steps in a fixed order, or None when all are off."""
    steps = [fn for name, fn in STEPS.items() if enabled.get(name, False)]
    if not steps:
        return None

    def clean(text: str) -> str:
        for step in steps:
            text = step(text)
        return text

    return clean
