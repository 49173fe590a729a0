"""Find personal data and secrets in training text, and replace each with a typed placeholder.

Patterns are paired with checksums where the format has one (Luhn for cards, ISO 13616 mod-97
for IBANs, octet ranges for IPs), so look-alikes such as order numbers are left alone. Phone numbers
are found by libphonenumber (`phonenumbers`), in national format for each region of
`data.pii.phone_regions` and with a + country code anywhere, and only when valid for that region.
Types are applied most-specific first and each replaced span becomes a placeholder the later
patterns cannot match, so one string is never counted twice.

Names and places have no pattern: with `ner="presidio"` a spaCy NER pipeline run through Presidio
finds them after the patterns, and they become `[PERSON]` and `[LOCATION]` the same way.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuneloop.config import DEFAULT_NER_MODEL, DEFAULT_PHONE_REGIONS, NER_TYPES, PII_TYPES, PiiConfig
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
# Phones: a run of digits in phone punctuation (no letters, no slashes) with seven digits or more is
# shown to libphonenumber's PhoneNumberMatcher, with a little context (it checks the characters around).
_PHONE_RUN = re.compile(r"[+(]?\d[\d ().-]{5,}\d")
# Shapes that are never phones, blanked out before runs are looked for: dates, times, SSNs, amounts (with
# a currency, or with decimals). Each keeps its length, so positions in the text stay the same.
_NOT_PHONES = re.compile(
    r"(?<![\d.,/-])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2}))(?!\d|[.,/-]\d)"
    r"|\d{1,2}:\d{2}(?::\d{2})?"
    r"|(?<![\d-])\d{3}-\d{2}-\d{4}(?!\d|-\d)"  # SSN-shaped, valid or not
    r"|(?<![\d)-])(?<![\d)] )\d{5}-\d{4}(?!\d|-\d)"  # ZIP+4 (but not a Brazilian mobile after its area code)
    r"|[$€£¥₹]\s?\d[\d,. ]*\d|\d[\d,. ]*\d\s?(?:[$€£¥₹]|(?:EUR|USD|GBP|CHF|AUD|CAD|INR|JPY)\b)"
    r"|(?<![\d.,])\d+(?:[,. ]\d{3})*[.,]\d{2}(?!\d|[.,-]\d)"
)
_CONTEXT = (2, 4)  # characters before and after a run that the matcher sees
# A number right after one of these words is an identifier, whatever its digits ("order 0412 345 678").
_IDENTIFIER_WORDS = frozenset(
    "order orders invoice inv po ref reference ticket case account acct customer client id tracking shipment "
    "parcel sku item serial transaction txn confirmation booking reservation policy claim member isbn "
    "bestellung bestellnummer rechnung kundennummer auftrag commande facture pedido factura ordine fattura".split()
)
_WORD_BEFORE = re.compile(r"([A-Za-zÀ-ÿ]+)\W{0,3}(?:(?:no|nr|number|num|nummer|numéro|n°)\.?\W{0,3})?$", re.IGNORECASE)
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
    return _bounded(m, _DIGITS + "+-wd", _DIGITS + "-wd") and luhn_valid(digits)  # +4915... is a phone


def _ssn(m: re.Match) -> bool:
    return _bounded(m, _DIGITS + "-w", _DIGITS + "-w") and not _SSN_INVALID.search(m.group(0))


def _ipv4(m: re.Match) -> bool:
    parts = m.group(0).split(".")
    ok = all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)
    # A full stop may end the sentence after an address; ".5" would make it part of something longer.
    text, end = m.string, m.end()
    longer = end + 1 < len(text) and text[end] == "." and text[end + 1].isdigit()
    return ok and not longer and _bounded(m, _DIGITS + ".w", _DIGITS + "w")


def _ipv6(m: re.Match) -> bool:
    if not _bounded(m, ":w", ":w") or m.group(0).count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(m.group(0))
    except ValueError:
        return False
    return True


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


@lru_cache(maxsize=1 << 16)
def _phones_in(window: str, regions: tuple[str, ...], grouped: bool) -> tuple[tuple[int, int], ...]:
    """Spans of valid phone numbers in `window`, trying `regions` in order until every digit is covered.

    `grouped` also asks that the digits be grouped the way the region writes its numbers (libphonenumber's
    STRICT_GROUPING), for a run with no trunk prefix, + or parentheses to show it is a phone: "98765 43210"
    is an Indian mobile, "1234-5678-90" an order number. Cached: the same number tends to recur in a data
    set (a company's hotline, a customer's mobile).
    """
    from phonenumbers import Leniency, PhoneNumberMatcher

    leniency = Leniency.STRICT_GROUPING if grouped else Leniency.VALID
    found: set[tuple[int, int]] = set()
    want = len(_digits(window))
    for region in regions:
        # Seven digits at least: some regions' short numbers (four digits in Germany) are valid too.
        found |= {
            (m.start, m.end)
            for m in PhoneNumberMatcher(window, region, leniency=leniency)
            if len(_digits(m.raw_string)) >= 7
        }
        if any(len(_digits(window[a:b])) == want for a, b in found):
            break  # one number covers the whole run: no other region can do better
    spans: list[tuple[int, int]] = []
    for start, end in sorted(found, key=lambda s: s[0] - s[1]):  # longest first; a shorter overlap loses
        if not any(start < b and a < end for a, b in spans):
            spans.append((start, end))
    return tuple(sorted(spans))


class PhoneFinder:
    """Valid phone numbers: national format in any of `regions`, or international (+ country code)."""

    def __init__(self, regions: Iterable[str] = DEFAULT_PHONE_REGIONS) -> None:
        import phonenumbers
        from phonenumbers import PhoneMetadata

        self.regions = tuple(r.upper() for r in regions)
        unknown = [r for r in self.regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone region {', '.join(unknown)}; use ISO 3166 codes such as GB, DE, IN")
        # Per region, its national prefix and the pattern every one of its numbers matches (the
        # library's metadata): a cheap test of which regions a run could belong to at all, so the
        # matcher (about a millisecond per region) only runs where it can succeed.
        self._shapes = []
        for region in self.regions:
            meta = PhoneMetadata.metadata_for_region(region)
            shape = re.compile(meta.general_desc.national_number_pattern)
            self._shapes.append((region, meta.national_prefix or "", shape))

    def _candidate_regions(self, run: str, digits: str) -> tuple[str, ...]:
        if run.startswith("+"):
            return self.regions[:1] or ("ZZ",)  # any region's matcher reads a + country code
        if digits.startswith("00"):
            return self.regions  # an international call prefix: which one depends on the region
        regions = []
        for region, prefix, shape in self._shapes:
            national = digits[len(prefix) :] if prefix and digits.startswith(prefix) else None
            if shape.fullmatch(digits) or (national and shape.fullmatch(national)):
                regions.append(region)
        return tuple(regions)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each phone number in `text`."""
        found = []
        for outer in _PHONE_RUN.finditer(text):
            if sum(ch.isdigit() for ch in outer.group(0)) < 7:
                continue
            # Dates, times and amounts are blanked out around the run only: over the whole text the
            # pattern cost more than everything else PII does.
            lo = max(0, outer.start() - 3)
            piece = _NOT_PHONES.sub(lambda m: "_" * len(m.group(0)), text[lo : outer.end() + 5])
            for inner in _PHONE_RUN.finditer(piece):
                start, end = lo + inner.start(), lo + inner.end()
                if end <= outer.end():
                    found += self._numbers(text, start, end)
        return found

    def _numbers(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        run = text[start:end]
        digits = _digits(run)
        # More than 15 digits is no single phone number (E.164's limit): a tracking or card number.
        if not 7 <= len(digits) <= 15 or _part_of_an_identifier(text, start, end):
            return []
        regions = self._candidate_regions(run, digits)
        if not regions:
            return []
        lo, hi = max(0, start - _CONTEXT[0]), min(len(text), end + _CONTEXT[1])
        return [(lo + a, lo + b) for a, b in _phones_in(text[lo:hi], regions, run[0] not in "0+(")]


def _part_of_an_identifier(text: str, start: int, end: int) -> bool:
    """`#1234567`, `INV-2024-001234`, `v10.2.3`, `order no. 0412 345 678`: digits of a code, not a phone number."""
    before = text[start - 1] if start else ""
    if before == "#" or before.isalpha() or (before in "-/_" and start > 1 and text[start - 2].isalnum()):
        return True
    if end + 1 < len(text) and text[end] in "-/_" and text[end + 1].isalpha():
        return True
    word = _WORD_BEFORE.search(text, max(0, start - 40), start)
    return word is not None and word.group(1).lower() in _IDENTIFIER_WORDS


_DIGIT = re.compile(r"\d")
# Cards (13+ digits) need ten digits with at most three other characters between neighbours, and
# phones seven; most text that has digits at all has no such run.
_TEN_DIGITS = re.compile(r"\d(?:\D{0,3}\d){9}")
_SEVEN_DIGITS = re.compile(r"\d(?:\D{0,3}\d){6}")
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
        if _SEVEN_DIGITS.search(text):
            found.add("seven_digits")
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
        phone_regions: Iterable[str] = DEFAULT_PHONE_REGIONS,
    ) -> None:
        chosen = list(types)
        unknown = [t for t in chosen if t not in PII_TYPES]
        if unknown:
            raise ValueError(f"unknown PII type {', '.join(unknown)}; valid: {', '.join(PII_TYPES)}")
        if ner not in NER_BACKENDS:
            raise ValueError(f"unknown NER backend {ner!r}; valid: {', '.join(NER_BACKENDS)}")
        self.types = frozenset(chosen)
        self._rules = [rule for rule in _RULES if rule[0] in self.types]
        self.phones = PhoneFinder(phone_regions) if "PHONE" in self.types else None
        # Built here, not per text: loading a pipeline takes seconds, and prepare's forked workers inherit it.
        self.ner = PresidioNer(ner_model, ner_types) if ner == "presidio" else None

    @classmethod
    def from_config(cls, pii: PiiConfig, root: Path | None = None) -> PiiScanner:
        """The scanner that a `data.pii` config section describes; `root` is the config's folder."""
        model = pii.ner_model
        if root is not None and (root / model).is_dir():  # a pipeline folder beside the config
            model = str(root / model)
        return cls(pii.types, ner=pii.ner, ner_model=model, ner_types=pii.ner_types, phone_regions=pii.phone_regions)

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
        if self.phones is not None and "seven_digits" in features:  # last: the most look-alikes
            text = self._redact_phones(text, counts)
        if self.ner is not None and ner:
            text = self.ner.redact(text, counts)
        return text, counts

    def _redact_phones(self, text: str, counts: Counter[str]) -> str:
        assert self.phones is not None
        out, pos = [], 0
        for start, end in self.phones.spans(text):
            out += [text[pos:start], "[PHONE]"]
            counts["PHONE"] += 1
            pos = end
        return "".join(out) + text[pos:] if out else text

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
