"""Find personal data and secrets in training text, and replace each with a typed placeholder.

Patterns are paired with checksums where the format has one (Luhn for cards, ISO 13616 mod-97
for IBANs, octet ranges for IPs), so look-alikes such as order numbers are left alone. Types are
applied most-specific first and each replaced span becomes a placeholder the later patterns
cannot match, so one string is never counted twice.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable

PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET")

_SECRET = re.compile(
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY-----"
    r"|\bsk-ant-[A-Za-z0-9_-]{20,}"
    r"|\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"
    r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\bglpat-[A-Za-z0-9_-]{20,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\bhf_[A-Za-z0-9]{30,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
# Substrings every secret above contains; scanning for them is far cheaper than the regex.
_SECRET_HINTS = (
    "sk-", "sk_", "rk_", "pk_", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "glpat-", "xox", "AIza", "hf_", "eyJ", "PRIVATE KEY",
)  # fmt: skip

# Patterns start with a character class (no leading look-behind) so `re` can skip ahead quickly;
# what must not come before or after a match is checked by `_bounded` in the validators.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}")
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?")
# Contiguous, or grouped the way cards are printed (4-4-4-4..., Amex 4-6-5) with one separator kind.
_CARD = re.compile(r"\d{4}(?:([ -])\d{4}\1\d{4}\1\d{1,7}|([ -])\d{6}\2\d{5}|\d{9,15})")
_SSN = re.compile(r"\d{3}-\d{2}-\d{4}")
_SSN_INVALID = re.compile(r"^(?:000|666|9\d\d)|^\d{3}-00|-0000$")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_IPV6 = re.compile(r"[0-9A-Fa-f]{0,4}:(?:[0-9A-Fa-f]{0,4}:){1,6}[0-9A-Fa-f]{0,4}")
# A phone number needs a phone's shape: a leading + with groups, or US 3-3-4 with separators.
# Plain digit runs (order numbers), dates and times do not have it.
# Three patterns rather than one alternation: each starts with a literal or a class, which `re`
# scans for quickly; the alternation was 3x slower on text without phone numbers.
_PHONES = (
    re.compile(r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"),
    re.compile(r"\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"),
    re.compile(r"\d{3}[ .-]\d{3}[ .-]\d{4}"),
)
_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(PII_TYPES) + r")\]")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers, mod 97 must be 1."""
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _bounded(m: re.Match, before: str, after: str) -> bool:
    """The match is not glued to characters that would make it part of something longer."""
    text, start, end = m.string, m.start(), m.end()
    if start and (text[start - 1] in before or (text[start - 1].isalnum() and "w" in before)):
        return False
    if end < len(text) and (text[end] in after or (text[end].isalnum() and "w" in after)):
        return False
    # "1234 5678" followed by " 9012": a digit group continuing after a separator
    if end + 1 < len(text) and text[end] in " .-" and text[end + 1].isdigit() and "d" in after:
        return False
    return not (start > 1 and text[start - 1] in " .-" and text[start - 2].isdigit() and "d" in before)


_DIGITS = "0123456789"


def _email(m: re.Match) -> bool:
    return _bounded(m, "", "-w")


def _iban(m: re.Match) -> bool:
    return _bounded(m, "w", "w") and iban_valid(m.group(0))


def _card(m: re.Match) -> bool:
    digits = m.group(0).replace(" ", "").replace("-", "")
    return _bounded(m, _DIGITS + "-wd", _DIGITS + "-wd") and luhn_valid(digits)


def _ssn(m: re.Match) -> bool:
    return _bounded(m, _DIGITS + "-w", _DIGITS + "-w") and not _SSN_INVALID.search(m.group(0))


def _ipv4(m: re.Match) -> bool:
    parts = m.group(0).split(".")
    ok = all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)
    return ok and _bounded(m, _DIGITS + ".w", _DIGITS + ".w")


def _ipv6(m: re.Match) -> bool:
    if not _bounded(m, ":w", ":w") or m.group(0).count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(m.group(0))
    except ValueError:
        return False
    return True


def _phone(m: re.Match) -> bool:
    digits = sum(c.isdigit() for c in m.group(0))
    return 10 <= digits <= 15 and _bounded(m, "+w", "w")


_DIGIT = re.compile(r"\d")
_SECRET_HINT = re.compile("|".join(re.escape(h) for h in _SECRET_HINTS))


def _features(text: str) -> frozenset[str]:
    """Cheap facts about a text that decide which patterns can possibly match (computed once)."""
    found = set()
    if _DIGIT.search(text):
        found.add("digit")
        if "-" in text:
            found.add("dash")
        if "." in text:
            found.add("dot")
    if "@" in text:
        found.add("at")
    if text.count(":") >= 2:
        found.add("colons")
    if _SECRET_HINT.search(text):
        found.add("secret")
    return frozenset(found)


# (type, pattern, validator, the feature a text must have for the pattern to run), in run order.
_RULES: tuple[tuple[str, re.Pattern, Callable[[re.Match], bool], str], ...] = (
    ("SECRET", _SECRET, lambda m: True, "secret"),
    ("EMAIL", _EMAIL, _email, "at"),
    ("IBAN", _IBAN, _iban, "digit"),
    ("CREDIT_CARD", _CARD, _card, "digit"),
    ("SSN", _SSN, _ssn, "dash"),
    ("IP_ADDRESS", _IPV4, _ipv4, "dot"),
    ("IP_ADDRESS", _IPV6, _ipv6, "colons"),
    *(("PHONE", pattern, _phone, "digit") for pattern in _PHONES),
)


class PiiScanner:
    """Detects and redacts the chosen PII types; `types` is a subset of PII_TYPES."""

    def __init__(self, types: Iterable[str] = PII_TYPES) -> None:
        chosen = list(types)
        unknown = [t for t in chosen if t not in PII_TYPES]
        if unknown:
            raise ValueError(f"unknown PII type {', '.join(unknown)}; valid: {', '.join(PII_TYPES)}")
        self.types = frozenset(chosen)
        self._rules = [rule for rule in _RULES if rule[0] in self.types]

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Replace each PII span with `[TYPE]`; return the new text and the count per type."""
        counts: Counter[str] = Counter()
        features = _features(text)
        if not features:
            return text, counts
        for name, pattern, validate, needs in self._rules:
            if needs not in features:
                continue

            def replace(m: re.Match, name: str = name, validate=validate) -> str:
                if not validate(m):
                    return m.group(0)
                counts[name] += 1
                return f"[{name}]"

            text = pattern.sub(replace, text)
        return text, counts

    def detect(self, text: str) -> Counter[str]:
        """Count PII per type without changing the text."""
        return self.redact(text)[1]


def is_placeholder(text: str) -> bool:
    """Whether `text` is exactly one of our placeholders."""
    return bool(_PLACEHOLDER.fullmatch(text))
