"""Find personal data and secrets in training text, and replace each with a typed placeholder.

Patterns are paired with checksums where the format has one (Luhn for cards, ISO 13616 mod-97
for IBANs, octet ranges for IPs), so look-alikes such as order numbers are left alone. Types are
applied most-specific first and each replaced span becomes a placeholder the later patterns
cannot match, so one string is never counted twice.

Names and places have no pattern: with `ner="presidio"` a spaCy NER pipeline run through Presidio
finds them after the patterns, and they become `[PERSON]` and `[LOCATION]` the same way.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tuneloop.config import DEFAULT_NER_MODEL, NER_TYPES, PII_TYPES, PiiConfig
from tuneloop.errors import UserError

NER_BACKENDS: tuple[str, ...] = ("off", "presidio")

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
_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(PII_TYPES + NER_TYPES) + r")\]")
# spaCy's entity labels behind each NER type. English (OntoNotes) pipelines say PERSON, GPE, LOC and
# FAC (buildings, streets, airports: the parts of an address); most other languages say PER and LOC.
_NER_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
_INSTALL_HINT = (
    "pip install 'tuneloop[presidio]' (or: pip install presidio-analyzer spacy), then install a spaCy "
    "model: python -m spacy download en_core_web_lg"
)


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
# Cards (13+ digits) and phones (10+) both need ten digits with at most three other characters
# between neighbours; most text that has digits at all (dates, order numbers) has no such run.
_TEN_DIGITS = re.compile(r"\d(?:\D{0,3}\d){9}")
_DIGIT_DOT_DIGIT = re.compile(r"\d\.\d")
_SECRET_HINT = re.compile("|".join(re.escape(h) for h in _SECRET_HINTS))


def _features(text: str) -> frozenset[str]:
    """Cheap facts about a text that decide which patterns can possibly match (computed once)."""
    found = set()
    if _DIGIT.search(text):
        found.add("digit")
        if "-" in text:
            found.add("dash")
        if "." in text and _DIGIT_DOT_DIGIT.search(text):
            found.add("dot")
        if _TEN_DIGITS.search(text):
            found.add("ten_digits")
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
    ("CREDIT_CARD", _CARD, _card, "ten_digits"),
    ("SSN", _SSN, _ssn, "dash"),
    ("IP_ADDRESS", _IPV4, _ipv4, "dot"),
    ("IP_ADDRESS", _IPV6, _ipv6, "colons"),
    *(("PHONE", pattern, _phone, "ten_digits") for pattern in _PHONES),
)


class PiiScanner:
    """Detects and redacts the chosen PII types; `types` is a subset of PII_TYPES.

    With `ner="presidio"`, names and places (`ner_types`, a subset of NER_TYPES) found by the spaCy
    pipeline `ner_model` are replaced too, after the patterns.
    """

    def __init__(
        self,
        types: Iterable[str] = PII_TYPES,
        *,
        ner: str = "off",
        ner_model: str = DEFAULT_NER_MODEL,
        ner_types: Iterable[str] = NER_TYPES,
    ) -> None:
        chosen = list(types)
        unknown = [t for t in chosen if t not in PII_TYPES]
        if unknown:
            raise ValueError(f"unknown PII type {', '.join(unknown)}; valid: {', '.join(PII_TYPES)}")
        if ner not in NER_BACKENDS:
            raise ValueError(f"unknown NER backend {ner!r}; valid: {', '.join(NER_BACKENDS)}")
        self.types = frozenset(chosen)
        self._rules = [rule for rule in _RULES if rule[0] in self.types]
        # Built here, not per text: loading a pipeline takes seconds, and prepare's forked workers inherit it.
        self.ner = PresidioNer(ner_model, ner_types) if ner == "presidio" else None

    @classmethod
    def from_config(cls, pii: PiiConfig, root: Path | None = None) -> PiiScanner:
        """The scanner that a `data.pii` config section describes; `root` is the config's folder."""
        model = pii.ner_model
        if root is not None and (root / model).is_dir():  # a pipeline folder beside the config
            model = str(root / model)
        return cls(pii.types, ner=pii.ner, ner_model=model, ner_types=pii.ner_types)

    def redact(self, text: str, ner: bool = True) -> tuple[str, Counter[str]]:
        """Replace each PII span with `[TYPE]`; return the new text and the count per type.

        `ner=False` applies the patterns only, for a caller that runs `self.ner` in batches.
        """
        counts: Counter[str] = Counter()
        features = _features(text)
        if not features and (self.ner is None or not ner):
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
        if self.ner is not None and ner:
            text = self.ner.redact(text, counts)
        return text, counts

    def detect(self, text: str, ner: bool = True) -> Counter[str]:
        """Count PII per type without changing the text."""
        return self.redact(text, ner)[1]


class PresidioNer:
    """Names and places found by a spaCy pipeline, run through Presidio's AnalyzerEngine.

    `model` is an installed spaCy package (en_core_web_lg) or a folder saved with `nlp.to_disk()`.
    Raises UserError when Presidio, spaCy or the model is missing; nothing is ever downloaded.
    """

    def __init__(self, model: str = DEFAULT_NER_MODEL, types: Iterable[str] = NER_TYPES) -> None:
        self.types = sorted(set(types))
        unknown = [t for t in self.types if t not in NER_TYPES]
        if unknown or not self.types:
            raise ValueError(f"NER types must be among {', '.join(NER_TYPES)}, not {', '.join(unknown) or 'none'}")
        try:
            import spacy
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
        except ImportError as e:
            raise UserError(
                f"data.pii.ner: presidio needs {e.name or 'presidio-analyzer and spacy'}: {_INSTALL_HINT}"
            ) from e
        nlp = _load_spacy(spacy, model)
        labels = {label for component in nlp.pipe_labels.values() for label in component}
        mapping = {label: kind for label, kind in _NER_LABELS.items() if kind in self.types}
        if not labels & mapping.keys():
            raise UserError(
                f"data.pii.ner_model: the spaCy pipeline {model} labels no entity {' or '.join(mapping)} "
                f"(its labels: {', '.join(sorted(labels)) or 'none'}), so it would find nothing; use a "
                f"pipeline with an NER component, e.g. {DEFAULT_NER_MODEL}"
            )
        self.language = nlp.lang
        config = NerModelConfiguration(
            model_to_presidio_entity_mapping=mapping,
            # Presidio keeps an unmapped label (ORG, DATE, ...) and logs a warning for every one it sees.
            labels_to_ignore=sorted(labels - mapping.keys()),
        )
        engine = SpacyNlpEngine(models=[{"lang_code": nlp.lang, "model_name": model}], ner_model_configuration=config)
        # Handing over the loaded pipeline keeps Presidio from loading it, and its loader would run
        # `spacy download` for a model it cannot find.
        engine.nlp = {nlp.lang: nlp}
        # Only the NER recognizer: the patterns above cover the rest, and some of Presidio's pattern
        # recognizers call tldextract, which fetches the public suffix list over the network.
        registry = RecognizerRegistry(supported_languages=[nlp.lang])
        registry.add_nlp_recognizer(nlp_engine=engine)
        self.analyzer: Any = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[nlp.lang])

    def redact(self, text: str, counts: Counter[str]) -> str:
        """Replace each entity with `[TYPE]` and count it into `counts`; placeholders already there stay."""
        if not text.strip():
            return text
        return self._replace(text, self.analyzer.analyze(text, language=self.language, entities=self.types), counts)

    def redact_many(self, texts: list[str], batch_size: int = 64) -> list[tuple[str, Counter[str]]]:
        """`redact` for many texts, with the spaCy pipeline run over them in batches (`nlp.pipe`)."""
        from presidio_analyzer import BatchAnalyzerEngine

        batch = BatchAnalyzerEngine(self.analyzer)
        found = batch.analyze_iterator(texts, language=self.language, batch_size=batch_size, entities=self.types)
        out = []
        for text, entities in zip(texts, found, strict=True):
            counts: Counter[str] = Counter()
            out.append((self._replace(text, entities, counts), counts))
        return out

    @staticmethod
    def _replace(text: str, found: list[Any], counts: Counter[str]) -> str:
        if not found:
            return text
        # A model can tag a placeholder's word ("EMAIL") or a span reaching into one: that text is
        # already redacted and counted.
        taken = [m.span() for m in _PLACEHOLDER.finditer(text)]
        out, pos = [], 0
        for r in sorted(found, key=lambda r: (r.start, -r.end)):
            if r.start < pos or any(start < r.end and r.start < end for start, end in taken):
                continue
            out += [text[pos : r.start], f"[{r.entity_type}]"]
            counts[r.entity_type] += 1
            pos = r.end
        return "".join(out) + text[pos:]


def _load_spacy(spacy: Any, model: str) -> Any:
    """Load a spaCy pipeline by package name or folder, or say how to get one; never download it."""
    folder = Path(model).expanduser()
    if not (spacy.util.is_package(model) or folder.is_dir()):
        if "/" in model or "\\" in model or model.startswith((".", "~")):
            what, package = f"there is no folder {folder}", DEFAULT_NER_MODEL
        else:
            what, package = f"{model} is not an installed spaCy package", model
        raise UserError(
            f"data.pii.ner_model: {what}. Install a spaCy model with an NER component (python -m spacy "
            f"download {package}, or pip install the model's wheel), or set data.pii.ner_model to a folder "
            "saved with nlp.to_disk()"
        )
    try:
        return spacy.load(model if spacy.util.is_package(model) else folder)
    except (OSError, ValueError, ImportError) as e:
        raise UserError(f"data.pii.ner_model: could not load the spaCy pipeline {model}: {e}") from e


def is_placeholder(text: str) -> bool:
    """Whether `text` is exactly one of our placeholders."""
    return bool(_PLACEHOLDER.fullmatch(text))
