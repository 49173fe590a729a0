"""PII redaction: fixtures are caught with the right type; look-alikes are left alone."""

import pytest

from tuneloop.data.pii import PII_TYPES, PiiScanner, iban_valid, luhn_valid

scanner = PiiScanner()

CAUGHT = [
    ("write to jane.doe+billing@mail.example.co.uk today", "EMAIL"),
    ("ops@acme-corp.io", "EMAIL"),
    ("call +1-202-555-0143", "PHONE"),
    ("call (202) 555-0143 after 5", "PHONE"),
    ("or 202.555.0143", "PHONE"),
    ("UK office +44 20 7946 0958", "PHONE"),
    # National formats outside the US (issue 20): found by libphonenumber for the configured regions.
    ("London office 020 7946 0958, ask for Sam", "PHONE"),
    ("my mobile is 07700 900123", "PHONE"),
    ("Berlin: 030 12345678", "PHONE"),
    ("Paris, appelez le 01 45 67 89 10 svp", "PHONE"),
    ("Sydney mobile 0412 345 678", "PHONE"),
    ("Madrid 91 123 45 67.", "PHONE"),
    ("Mumbai mobile 98765 43210", "PHONE"),
    ("São Paulo (11) 91234-5678", "PHONE"),
    ("Tokyo 03-1234-5678", "PHONE"),
    ("Roma 06 1234 5678", "PHONE"),
    ("Amsterdam 020 123 4567", "PHONE"),
    ("card 4111 1111 1111 1111 exp 12/27", "CREDIT_CARD"),
    ("card 4111-1111-1111-1111", "CREDIT_CARD"),
    ("amex 3782 822463 10005", "CREDIT_CARD"),
    ("pay to GB82 WEST 1234 5698 7654 32 please", "IBAN"),
    ("IBAN DE89370400440532013000", "IBAN"),
    ("SSN 123-45-6789", "SSN"),
    ("from 192.168.1.20 at noon", "IP_ADDRESS"),
    ("v6 2001:db8::8a2e:370:7334", "IP_ADDRESS"),
    ("OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx1234", "SECRET"),
    ("aws AKIAIOSFODNN7EXAMPLE", "SECRET"),
    ("token ghp_" + "a1B2c3D4e5" * 4, "SECRET"),
    ("stripe sk_live_" + "x" * 24, "SECRET"),
    ("slack xoxb-1234567890-abcdefghij", "SECRET"),
    ("hf hf_" + "Ab1" * 12, "SECRET"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "SECRET"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----", "SECRET"),
]

LOOK_ALIKES = [
    "order 1234 5678 9012 3456 (fails Luhn)",
    "order number 20250114123",
    "IBAN-shaped GB00 WEST 1234 5698 7654 32 (fails mod-97)",
    "released 2024-01-15 at 10:30",
    "upgrade to v1.2.3 or build 10.0.19045.2965",
    "it costs $1,234.56 per year",
    "invalid SSN 000-12-3456 and 666-12-3456",
    "255.300.1.1 is not an address",
    "she was sk-ating with friends; hf_x and gh_pages",
    "name@localhost and @handle",
    "extension 5551234",
    "order 58213947 and order #12345678 and INV-2024-001234",
    "order 1234-5678-90 shipped",
    "on 15/03/2024, 03.15.2024 and 2024-03-15 at 14:30:05",
    "totals 1.234.567,89 €, $1,234,567 and 1 234 567,89 EUR",
    "the amount was 1234567.89",
    "tracking 1Z999AA10123456784 and 9400 1000 0000 0000 0000 00",
    "ship to 90210-1234",
    "ISBN 978-3-16-148410-0",
]


@pytest.mark.parametrize(("text", "kind"), CAUGHT)
def test_fixtures_are_caught(text, kind):
    redacted, counts = scanner.redact(text)
    assert counts == {kind: 1}, (redacted, counts)
    assert f"[{kind}]" in redacted


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_left_alone(text):
    assert scanner.redact(text) == (text, {})


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("1234567890123456")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB00 WEST 1234 5698 7654 32")


def test_many_types_in_one_text_counted_once_each():
    text = "Mail a.b@example.com, call +1-202-555-0143, card 4111 1111 1111 1111, ip 10.0.0.1"
    redacted, counts = scanner.redact(text)
    assert counts == {"EMAIL": 1, "PHONE": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1}
    assert redacted == "Mail [EMAIL], call [PHONE], card [CREDIT_CARD], ip [IP_ADDRESS]"


def test_idempotent_and_detect_does_not_change():
    text = "write to jane@example.com or call +1-202-555-0143"
    once, counts = scanner.redact(text)
    assert scanner.redact(once) == (once, {})
    assert scanner.detect(text) == counts


def test_type_subset_and_unknown_type():
    only_email = PiiScanner(["EMAIL"])
    assert only_email.redact("jane@example.com +1-202-555-0143") == ("[EMAIL] +1-202-555-0143", {"EMAIL": 1})
    with pytest.raises(ValueError, match="unknown PII type NAME"):
        PiiScanner(["NAME"])
    assert set(PII_TYPES) == {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET"}


def test_phone_regions_pick_the_national_formats():
    only_us = PiiScanner(["PHONE"], phone_regions=["US"])
    assert only_us.redact("Paris 01 45 67 89 10") == ("Paris 01 45 67 89 10", {})
    # With its country code a number is found whatever the regions.
    assert only_us.redact("Paris +33 1 45 67 89 10") == ("Paris [PHONE]", {"PHONE": 1})
    assert only_us.redact("call (202) 555-0143") == ("call [PHONE]", {"PHONE": 1})
    assert PiiScanner(["PHONE"], phone_regions=["FR"]).redact("01 45 67 89 10") == ("[PHONE]", {"PHONE": 1})
    with pytest.raises(ValueError, match="unknown phone region XX"):
        PiiScanner(phone_regions=["XX"])
