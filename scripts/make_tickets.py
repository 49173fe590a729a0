"""Generate synthetic customer-support tickets, each paired with its JSON triage record.

The tickets are written to a fictional company, Larkspur, that sells three software products
(Nimbus Drive, LedgerLite, TaskPilot) and three devices (Beacon Hub, PocketPOS, Orbit Speaker).
Each row is a chat example: a fixed system instruction, the ticket, and the answer

    {"category": ..., "priority": ..., "product": ..., "order_id": ...}

with the keys always in that order. Every field can be read off the ticket by a careful reader:

- category: what the customer wants done (billing, technical, account, shipping or refund);
- priority: explicit cues only. urgent and high tickets contain an urgency sentence, low tickets a
  "no rush"/"just curious" sentence, medium tickets neither (sometimes a mild "I can work around it");
- product: the product named in the ticket, or null when it is only called "the app", "the hub"...;
- order_id: the ORD-12345 style id quoted in the ticket, or null when there is none (invoice numbers
  like INV-12345 appear as distractors and are never an order id).

Variety comes from many problem templates per category, paraphrases, optional context sentences,
shuffled sentence order, greetings, sign-offs and the occasional typo, so a model has to read the
ticket rather than match a template. The company's own name never appears in a ticket (a small
model takes it for a product name). No emails, phone numbers or card numbers are generated: the
data stage would redact them, and the tickets should need no redaction.

    python scripts/make_tickets.py                 # 1,300 rows into src/tuneloop/templates/quickstart/
    python scripts/make_tickets.py --count 12 --seed 3 --out src/tuneloop/templates/samples/extraction.jsonl --no-schema
    python scripts/make_tickets.py --count 400 --seed 400 --out examples/extraction/data/tickets.jsonl \\
        --schema examples/extraction/ticket.schema.json

The same arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "src" / "tuneloop" / "templates" / "quickstart"
DEFAULT_OUT = QUICKSTART / "tickets.jsonl"
DEFAULT_SCHEMA = QUICKSTART / "ticket.schema.json"
DEFAULT_SEED = 20250101
DEFAULT_COUNT = 1300

CATEGORIES = ("billing", "technical", "account", "shipping", "refund")
PRIORITIES = ("low", "medium", "high", "urgent")

SYSTEM_PROMPT = (
    "Triage the support ticket. Reply with JSON only: category (billing, technical, account, shipping or refund), "
    "priority (low, medium, high or urgent), product (Nimbus Drive, LedgerLite, TaskPilot, Beacon Hub, PocketPOS, "
    "Orbit Speaker, or null if none is named), order_id (the ORD- id, or null)."
)


@dataclass(frozen=True)
class Product:
    name: str
    kind: str  # "software" or "device"
    generic: tuple[str, ...]  # how customers refer to it without naming it


PRODUCTS = (
    Product("Nimbus Drive", "software", ("storage app", "cloud storage app", "app")),
    Product("LedgerLite", "software", ("invoicing app", "accounting app", "app")),
    Product("TaskPilot", "software", ("project board", "task app", "app")),
    Product("Beacon Hub", "device", ("hub", "smart hub", "device")),
    Product("PocketPOS", "device", ("card reader", "reader", "device")),
    Product("Orbit Speaker", "device", ("speaker", "wireless speaker", "device")),
)
PRODUCT_NAMES = tuple(p.name for p in PRODUCTS)


@dataclass(frozen=True)
class Template:
    """One problem description: paraphrases of the same request, and what it is compatible with."""

    texts: tuple[str, ...]
    products: tuple[str, ...]  # product kinds or names the problem fits; empty: it never names a product
    priorities: tuple[str, ...] = PRIORITIES


SW, DEV, ANY = ("software",), ("device",), ("software", "device")
LOW_TO_HIGH = ("low", "medium", "high")
CALM = ("low", "medium")
PRESSING = ("medium", "high", "urgent")

# {p} is the product: its name ("LedgerLite", "the Beacon Hub") or a generic phrase ("the app").
TEMPLATES: dict[str, tuple[Template, ...]] = {
    "billing": (
        Template(
            (
                "Could you send me the invoice for {p}? I can't find it anywhere on the billing page.",
                "I need a copy of the invoice for {p} from {when}. Our accountant is asking for it.",
                "Where do I download invoices for {p}? The billing section only shows the last payment.",
            ),
            ANY,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "My payment for {p} was declined {when} although the same card works everywhere else.",
                "The payment for {p} didn't go through {when}. The bank says nothing was blocked on their side.",
            ),
            ANY,
        ),
        Template(
            (
                "How do I update the payment method on our account? The old card expired last month.",
                "Our company card changed and I need to put the new one on the account. Where is that setting?",
            ),
            SW,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "We want to move from the {plan} plan to the {plan2} plan for {n} users. How would "
                "the change be billed?",
                "If we upgrade {p} to the {plan2} plan in the middle of the month, do we pay the "
                "difference right away?",
            ),
            SW,
            CALM,
        ),
        Template(
            (
                "The price of {p} went up from {amount} to {amount2} a month and nobody told us. Can "
                "you explain the new pricing?",
                "Our bill for {p} jumped from {amount} to {amount2} without any notice. What changed?",
            ),
            SW,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "Invoice {inv} shows the wrong company name. Can you reissue it with the correct details?",
                "Our invoice {inv} has an old billing address on it. Please send a corrected version.",
            ),
            ANY,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "I need to add our VAT number to future invoices. Where can I enter it?",
                "Can you put our company tax number on the invoices from now on?",
            ),
            ANY,
            CALM,
        ),
        Template(
            (
                "Why were we billed {amount} this month? Our plan for {p} is supposed to cost less than that.",
                "The statement shows {amount} for {p}, but the pricing page says our plan is "
                "cheaper. Which one is right?",
            ),
            SW,
            PRESSING,
        ),
        Template(
            (
                "Can I switch {p} from monthly to annual billing, and would that start now or at renewal?",
                "Is there a way to pay for {p} yearly instead of every month?",
            ),
            SW,
            CALM,
        ),
        Template(
            (
                "The automatic payment for {p} keeps failing and now there is a banner saying the "
                "account will be suspended.",
                "Our subscription payment for {p} failed three times and we got a suspension warning.",
            ),
            SW,
            ("high", "urgent"),
        ),
        Template(
            (
                "Is it possible to pay for {p} by bank transfer instead of by card?",
                "Our finance department only pays by bank transfer. Can we do that for {p}?",
            ),
            SW,
            CALM,
        ),
        Template(
            (
                "The receipt for {p} is missing the tax breakdown, so I can't file it as a business expense.",
                "My receipt for {p} doesn't list the tax separately. Could you send a proper one?",
            ),
            ANY,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "Our finance team needs every invoice from the last {months} months in one document.",
                "Can you send a statement covering the past {months} months of payments?",
            ),
            (),
            LOW_TO_HIGH,
        ),
        Template(
            (
                "We were promised a {pct}% discount on the yearly plan for {p}, but invoice {inv} "
                "shows the full price.",
                "Sales offered us {pct}% off {p}, yet the latest invoice is at full price. Please correct the invoice.",
            ),
            SW,
            PRESSING,
        ),
    ),
    "technical": (
        Template(
            (
                "{P} crashes every time I open it on {os}.",
                "{P} closes by itself a few seconds after starting on my {os} computer.",
                "Since the latest update {p} won't stay open on {os}, it just quits.",
            ),
            SW,
        ),
        Template(
            (
                "Sync in {p} has been stuck at {pct}% since {when} and never finishes.",
                "{P} says it is syncing, but the progress has sat at {pct}% since {when}.",
            ),
            SW,
        ),
        Template(
            (
                "I get error {code} whenever I try to save a file in {p}.",
                "Saving anything in {p} fails with error {code}.",
            ),
            SW,
        ),
        Template(
            (
                "{P} won't connect to the wifi any more after the last firmware update.",
                "After the firmware update {p} can't find our wireless network.",
            ),
            DEV,
        ),
        Template(
            (
                "{P} keeps disconnecting every few minutes and I have to pair it again.",
                "The connection to {p} drops every couple of minutes.",
            ),
            DEV,
        ),
        Template(
            (
                "Exports from {p} come out as empty files, the CSV has only the header row.",
                "When I export a report from {p} the file is blank.",
            ),
            SW,
        ),
        Template(
            (
                "The dashboard in {p} takes more than a minute to load since {when}.",
                "{P} has become really slow since {when}, every page takes ages to open.",
            ),
            SW,
        ),
        Template(
            (
                "Notifications from {p} stopped arriving on my phone.",
                "I no longer get any push notifications from {p}, although they are switched on.",
            ),
            SW,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "{P} shows a blinking red light and doesn't respond to any of the buttons.",
                "The light on {p} blinks red and nothing I press does anything.",
            ),
            DEV,
        ),
        Template(
            (
                "After updating to version {version}, {p} freezes on the loading screen.",
                "Version {version} broke something: {p} hangs while loading and never gets further.",
            ),
            ANY,
        ),
        Template(
            (
                "Uploading large files fails halfway with a network error, even on a fast connection.",
                "Big uploads stop in the middle with a network error, small ones work fine.",
            ),
            (),
        ),
        Template(
            (
                "The search in {p} returns nothing, even for items I know are there.",
                "Search is broken in {p}: it finds no results at all.",
            ),
            SW,
        ),
        Template(
            (
                "{P} doesn't pair with my phone any more. It worked fine until {when}.",
                "My phone can't see {p} in the bluetooth list since {when}.",
            ),
            DEV,
        ),
        Template(
            (
                "Card payments on {p} fail with a 'terminal not ready' message.",
                "{P} refuses every card payment and shows 'terminal not ready'.",
            ),
            ("PocketPOS",),
        ),
        Template(
            (
                "The battery of {p} drains in about an hour, it used to last all day.",
                "{P} runs out of battery within an hour now.",
            ),
            ("PocketPOS", "Orbit Speaker"),
        ),
    ),
    "account": (
        Template(
            (
                "I can't log in to {p}. It says my password is wrong, but I have reset it twice.",
                "Logging in to {p} fails with 'incorrect password' even right after a reset.",
            ),
            SW,
        ),
        Template(
            (
                "I want to change the email address on my account. Where do I do that?",
                "How can I update the login email for my account? I changed jobs.",
            ),
            SW,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "Please delete my account and all the data stored in {p}.",
                "I'd like my account closed and everything I stored in {p} erased.",
            ),
            SW,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "How do I turn on two-factor authentication for {p}?",
                "Does {p} support two-factor login, and where do I switch it on?",
            ),
            SW,
            CALM,
        ),
        Template(
            (
                "I lost my phone and now I can't get past the two-factor code on {p}.",
                "My authenticator was on my old phone, so I'm locked out of {p}.",
            ),
            SW,
            ("high", "urgent"),
        ),
        Template(
            (
                "I need to add {n} new team members to our workspace in {p}, but the invite button is greyed out.",
                "How do I invite {n} more colleagues to our workspace in {p}?",
            ),
            SW,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "A former employee still has admin access to our account. How do I remove them?",
                "Someone who left the company is still an admin on our account and I can't take the role away.",
            ),
            SW,
            PRESSING,
        ),
        Template(
            (
                "My account got locked after too many login attempts.",
                "The account is locked because of failed logins and the unlock link doesn't work.",
            ),
            (),
            PRESSING,
        ),
        Template(
            (
                "Can I transfer ownership of our workspace in {p} to my colleague {name2}?",
                "{name2} is taking over from me. How do I make them the owner of our workspace in {p}?",
            ),
            SW,
            CALM,
        ),
        Template(
            (
                "I keep getting password reset messages for {p} that I never asked for.",
                "Someone seems to be requesting password resets for my login to {p}, it wasn't me.",
            ),
            SW,
            PRESSING,
        ),
        Template(
            (
                "How do I change my username in {p}?",
                "Is it possible to rename my user profile in {p}?",
            ),
            SW,
            CALM,
        ),
        Template(
            (
                "The invite link for {p} says it has expired when my colleague tries to join.",
                "My colleague gets 'invitation expired' from {p} even with a fresh invite.",
            ),
            SW,
        ),
        Template(
            (
                "I have two accounts by accident and would like to merge them into one.",
                "Can you combine my two logins into a single account?",
            ),
            (),
            CALM,
        ),
        Template(
            (
                "I can't register {p} to my account, it says the serial number is already in use.",
                "Registering {p} fails because the serial is apparently linked to another account.",
            ),
            DEV,
        ),
    ),
    "shipping": (
        Template(
            (
                "My order hasn't arrived yet. It was supposed to be delivered {when}.",
                "I'm still waiting for my order, the delivery was due {when}.",
            ),
            DEV,
        ),
        Template(
            (
                "The tracking for {p} hasn't updated in {days} days.",
                "Tracking has shown the same status for {days} days now for {p}.",
            ),
            DEV,
        ),
        Template(
            (
                "I need to change the delivery address for my order before it ships.",
                "We moved office, can the order go to our new address instead?",
            ),
            DEV,
        ),
        Template(
            (
                "The box arrived damaged and {p} inside has a cracked case. Can you send a replacement?",
                "{P} came with a crushed box and a cracked case. Please ship a new one.",
            ),
            DEV,
        ),
        Template(
            (
                "I ordered {k} items but only {k1} were in the package.",
                "The parcel was missing something: I ordered {k} items and got {k1}.",
            ),
            DEV,
        ),
        Template(
            (
                "The courier says the package was delivered, but nothing was left at my door.",
                "Tracking shows 'delivered', yet no parcel ever reached us.",
            ),
            DEV,
        ),
        Template(
            (
                "Can I pick up {p} from a depot instead of waiting for home delivery?",
                "Is collection from a pickup point possible for {p}?",
            ),
            DEV,
            CALM,
        ),
        Template(
            (
                "How long does shipping to {country} usually take?",
                "What are the delivery times for orders to {country}?",
            ),
            DEV,
            CALM,
        ),
        Template(
            (
                "I received someone else's parcel instead of {p}.",
                "The package that arrived contains a different item, not {p}.",
            ),
            DEV,
        ),
        Template(
            (
                "The estimated delivery date for {p} keeps moving back.",
                "Every time I check, the delivery estimate for {p} is a few days later.",
            ),
            DEV,
        ),
        Template(
            (
                "Is it possible to upgrade my order to express delivery?",
                "Can I still switch to express shipping for my order?",
            ),
            DEV,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "The parcel with {p} is stuck in customs and I don't know what to do.",
                "Customs has been holding the package with {p} for {days} days.",
            ),
            DEV,
        ),
    ),
    "refund": (
        Template(
            (
                "I'd like to return {p} and get my money back, it's not what I expected.",
                "{P} isn't right for us. How do I send it back for a full refund?",
            ),
            DEV,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "I was charged twice for {p} this month. Please refund the duplicate payment of {amount}.",
                "There are two identical charges of {amount} for {p}. I want the second one refunded.",
            ),
            SW,
        ),
        Template(
            (
                "I cancelled my subscription to {p} {when} but was still charged {amount}. I want that refunded.",
                "Even though I cancelled {p} {when}, I was billed {amount} again. Please give it back.",
            ),
            SW,
        ),
        Template(
            (
                "I returned {p} {days} days ago and still haven't received my refund.",
                "It's been {days} days since I sent {p} back and the refund hasn't appeared.",
            ),
            DEV,
        ),
        Template(
            (
                "Can I get a refund for the unused months of my annual plan for {p}?",
                "If I stop using {p} now, will you refund the rest of the year I paid for?",
            ),
            SW,
            LOW_TO_HIGH,
        ),
        Template(
            (
                "{P} stopped working after a week. I don't want a replacement, I want a refund.",
                "After just one week {p} is dead. Please refund me rather than sending another one.",
            ),
            DEV,
        ),
        Template(
            (
                "The refund you promised {when} still hasn't shown up on my statement.",
                "Support confirmed a refund {when}, but the money never arrived.",
            ),
            ANY,
        ),
        Template(
            (
                "I bought {p} by mistake. Please cancel it and refund the payment.",
                "That purchase of {p} was an accident, can I have the money back?",
            ),
            ANY,
        ),
        Template(
            (
                "I was charged {amount} for an upgrade of {p} that I never asked for. I want my money back.",
                "Someone upgraded our plan for {p} to a {amount} tier without asking me. Please reverse the charge.",
            ),
            SW,
        ),
        Template(
            (
                "How do I request a refund for {p}? It's within the 30-day window.",
                "What is the process for getting a refund on {p}? I bought it recently.",
            ),
            ANY,
            CALM,
        ),
        Template(
            (
                "Please refund my order, it arrived {days} days late and I no longer need it.",
                "The delivery came {days} days too late for the event, so I want my money back.",
            ),
            DEV,
        ),
    ),
}

# Optional sentences that add length and realism; they never change the answer.
CONTEXT: dict[str, tuple[str, ...]] = {
    "billing": (
        "We're on the {plan} plan.",
        "I checked the billing page but couldn't find anything that explains it.",
        "Our company pays through the finance department, so I'm only the go-between here.",
        "The charge showed up {when}.",
        "I looked through the help articles first but they describe an older version of the billing page.",
        "Nothing changed on our side recently as far as I know.",
        "We have {n} seats on the account.",
        "Our accountant closes the books at the end of the month and keeps asking me about it.",
        "I'm the admin, but I don't normally deal with payments.",
        "The last few months were all fine.",
    ),
    "technical": (
        "I already restarted it twice.",
        "I'm on {os}.",
        "It started after the update {when}.",
        "Reinstalling didn't help, and neither did logging out and back in.",
        "A colleague sees the same thing on her laptop.",
        "It happens about half the time, which makes it hard to pin down.",
        "I tried {browser} and another browser as well, same result.",
        "Clearing the cache did not change anything.",
        "I can send a screenshot if that helps.",
        "Our internet connection is fine, everything else works normally.",
        "I checked your status page and it says all systems are operational.",
        "The settings are the defaults, I haven't changed anything.",
    ),
    "account": (
        "I've already tried the forgot password link.",
        "I'm the owner of the account.",
        "We have {n} people in the workspace.",
        "I'm using {browser} on {os}.",
        "I looked in the settings but couldn't see an option for it.",
        "The help page describes a menu that I don't have.",
        "We set the account up about {years} years ago, so some of the details may be old.",
        "Our IT person is away, which is why I'm writing.",
        "Nothing like this has happened before.",
    ),
    "shipping": (
        "I ordered it {days} days ago.",
        "The tracking page just says 'in transit'.",
        "I paid for standard delivery.",
        "Nobody has contacted me about it.",
        "It's meant to be a present.",
        "I checked with my neighbours already.",
        "The confirmation said it would ship within two working days.",
        "I've been home all week, so a missed delivery is unlikely.",
        "Other parcels reach this address without any trouble.",
        "The courier's website doesn't show anything useful.",
    ),
    "refund": (
        "I still have the original packaging.",
        "I paid by card.",
        "The payment went through {when}.",
        "I've read the refund policy on your site and I think this is covered.",
        "I'd prefer the money back on the original payment method.",
        "I've kept all the receipts.",
        "I'm happy to fill in a form if there is one.",
        "I don't want store credit.",
    ),
    "any": (
        "I've been a customer for {years} years.",
        "This is the first time I've contacted support.",
        "Thanks for the help last time.",
        "I hope this is the right place to ask.",
        "Sorry if this has been asked before.",
        "Overall we're happy with your service, this is the only problem.",
        "I searched the help centre before writing.",
        "Please let me know if you need any more details from me.",
        "I run a small shop, so I don't have an IT department.",
        "My colleague {name2} asked me to get in touch.",
    ),
}

# Priority is decided by these sentences alone, so it can be read off the ticket. Each ticket of a
# level has one cue of that level (medium: sometimes none) and never a cue of another level.
PRIORITY_CUES: dict[str, tuple[str, ...]] = {
    # urgent: the business is stopped or losing money now; high: the customer needs it soon.
    # No word is shared between the two levels' cues ("blocked", "today"), so they stay apart.
    "urgent": (
        "This is urgent.",
        "This is an emergency for our business.",
        "We are losing sales every hour this goes on.",
        "We can't operate at all until this is fixed.",
        "Critical issue, please escalate immediately.",
        "URGENT, please help right away.",
        "Everything has come to a standstill here.",
    ),
    "high": (
        "Please fix this asap.",
        "I have a deadline on Friday, so I need a quick answer.",
        "Could you please prioritise this?",
        "This is the third time I'm writing about this.",
        "I need it before my client meeting this week.",
        "Please get back to me as soon as possible.",
    ),
    "medium": (
        "It's annoying but I can work around it for now.",
        "It would be good to have this fixed at some point.",
        "It's not stopping me, but I'd like it fixed.",
        "Let me know what you find.",
    ),
    "low": (
        "No rush on this.",
        "Just a quick question for when you have time.",
        "Whenever you get a chance is fine.",
        "Not a big deal, just curious.",
        "No hurry, answer when you can.",
        "I'm just planning ahead, so no rush.",
        "Low priority, just wanted to flag it.",
        "Take your time with this one.",
    ),
}
PRIORITY_WEIGHTS = {"low": 0.25, "medium": 0.33, "high": 0.26, "urgent": 0.16}

ORDER_SHARE = {"billing": 0.3, "technical": 0.12, "account": 0.05, "shipping": 0.8, "refund": 0.7}
ORDER_SENTENCES = (
    "My order number is {order}.",
    "Order: {order}.",
    "The order ID is {order}.",
    "Order {order}, if that helps.",
    "Reference: {order}.",
    "It was order {order}.",
    "For reference, the order was {order}.",
)
MENTIONS = (
    "This is about {name}.",
    "I'm using {name}.",
    "Product: {name}.",
    "It's for our {name}.",
    "(This concerns {name}.)",
)
SUBJECTS: dict[str, tuple[str, ...]] = {
    "billing": ("Invoice question", "Billing", "Question about our bill", "Payment issue"),
    "technical": ("Bug report", "Something is broken", "Problem with the app", "Error"),
    "account": ("Account access", "Login problem", "Account settings", "User management"),
    "shipping": ("Delivery", "Where is my parcel?", "Shipping question", "Delivery problem"),
    "refund": ("Refund request", "Money back", "Refund", "Return and refund"),
}
GREETINGS = (
    "Hi,", "Hello,", "Hey team,", "Hi there,", "Good morning,", "Good afternoon,", "Dear support,",
    "Hello support team,", "Hi support,", "Hey,", "To whom it may concern,", "Hi folks,",
)  # fmt: skip
SIGNOFFS = (
    "Thanks, {name}", "Cheers, {name}", "Best regards, {name}", "Thank you! {name}", "- {name}",
    "Regards, {name}", "Thanks in advance.", "Many thanks, {name}", "Kind regards, {name}", "thx", "{name}",
)  # fmt: skip
NAMES = (
    "Anna", "Ben", "Carla", "Dev", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemi", "Lars", "Maya",
    "Nico", "Olu", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wes", "Xin", "Yara", "Zoe",
    "Marco", "Lena", "Tom", "Aisha", "Pedro", "Hana", "Igor", "Sofia", "Kai", "Mila",
)  # fmt: skip
SLOT_VALUES: dict[str, tuple[str, ...]] = {
    "when": ("yesterday", "last Tuesday", "on Monday", "two days ago", "this morning", "last week",
             "on the 3rd", "at the weekend", "last Friday", "a few days ago"),
    "os": ("Windows 11", "Windows 10", "macOS", "Ubuntu", "Android", "iOS", "a Chromebook"),
    "browser": ("Chrome", "Firefox", "Safari", "Edge"),
    "country": ("Canada", "Ireland", "Norway", "Portugal", "Japan", "Australia", "Mexico"),
    "version": ("4.2", "4.3.1", "5.0", "5.1", "3.9.2"),
}  # fmt: skip
PLANS = ("Starter", "Team", "Business", "Enterprise")
_WORD = re.compile(r"[A-Za-z]{4,}")
MIN_WORDS, MAX_WORDS = 30, 110


def _amount(rng: random.Random) -> str:
    return f"{rng.choice('$€£')}{rng.choice((9, 12, 19, 29, 49, 79, 99, 129, 249))}.{rng.choice(('00', '99', '50'))}"


def _slots(rng: random.Random) -> dict[str, str]:
    """Values for every placeholder a template may use (unused ones are simply ignored)."""
    values = {key: rng.choice(options) for key, options in SLOT_VALUES.items()}
    k = rng.randint(2, 5)
    plan = rng.randrange(len(PLANS) - 1)  # plan2 is always a bigger plan than plan
    values.update(
        plan=PLANS[plan],
        plan2=rng.choice(PLANS[plan + 1 :]),
        amount=_amount(rng),
        amount2=_amount(rng),
        n=str(rng.randint(2, 40)),
        days=str(rng.randint(3, 21)),
        months=str(rng.choice((3, 6, 12))),
        pct=str(rng.randint(5, 95)),
        years=rng.choice(("two", "three", "five", "six", "ten")),
        code=rng.choice(("500", "403", "E-1042", "E-2210", "timeout", "SYNC-17")),
        inv=f"INV-{rng.randint(10000, 99999)}",
        k=str(k),
        k1=str(k - 1),
        name2=rng.choice(NAMES),
    )
    return values


def _typo(text: str, rng: random.Random) -> str:
    """One human-looking typo (swapped, doubled or dropped letter) in an ordinary lowercase word."""
    words = [m for m in _WORD.finditer(text) if m.group(0).islower()]
    if not words:
        return text
    m = rng.choice(words)
    word, i = m.group(0), rng.randint(1, len(m.group(0)) - 2)
    kind = rng.choice(("swap", "double", "drop"))
    if kind == "swap":
        word = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    elif kind == "double":
        word = word[:i] + word[i] + word[i:]
    else:
        word = word[:i] + word[i + 1 :]
    return text[: m.start()] + word + text[m.end() :]


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


@dataclass
class Ticket:
    text: str
    answer: dict[str, str | None]


def make_ticket(rng: random.Random) -> Ticket:
    """One ticket and its triage record, drawn from `rng`."""
    category = rng.choice(CATEGORIES)
    template = rng.choice(TEMPLATES[category])
    text = rng.choice(template.texts)
    slots = _slots(rng)

    product: Product | None = None
    if template.products:
        fits = [p for p in PRODUCTS if p.kind in template.products or p.name in template.products]
        candidate = rng.choice(fits)
        named = rng.random() < 0.7
        if "{p}" in text.lower():
            # The problem refers to the product either by name or generically ("the app").
            noun = candidate.name if named else rng.choice(candidate.generic)
            phrase = noun if candidate.kind == "software" and named else f"the {noun}"
            slots.update(p=phrase, P=_capitalize(phrase))
            product = candidate if named else None
        elif named and rng.random() < 0.6:
            product = candidate
    problem = text.format(**slots)

    allowed = template.priorities
    priority = rng.choices(allowed, weights=[PRIORITY_WEIGHTS[p] for p in allowed])[0]
    order_id = f"ORD-{rng.randint(10000, 99999)}" if rng.random() < ORDER_SHARE[category] else None

    cue = None
    if priority != "medium" or rng.random() < 0.5:
        cue = rng.choice(PRIORITY_CUES[priority])

    # Middle sentences: context up to a drawn length, the order reference and a product mention,
    # in random order. Lengths spread from terse requests to chatty paragraphs.
    target = min(MAX_WORDS, max(MIN_WORDS, round(rng.lognormvariate(3.55, 0.35))))
    pool = rng.sample(CONTEXT[category], k=len(CONTEXT[category])) + rng.sample(CONTEXT["any"], k=3)
    middle: list[str] = []
    if order_id is not None:
        middle.append(rng.choice(ORDER_SENTENCES).format(order=order_id))
    if product is not None and product.name not in problem:
        middle.append(rng.choice(MENTIONS).format(name=product.name))
    words = sum(len(s.split()) for s in [problem, cue or "", *middle])
    context: list[str] = []
    while pool and words < target:
        sentence = pool.pop().format(**slots)
        if words + len(sentence.split()) > MAX_WORDS - 8:  # leave room for a greeting and a sign-off
            break
        context.append(sentence)
        words += len(sentence.split())
    # Typos go into ordinary prose only, never into ids, product names or priority cues.
    if rng.random() < 0.15:
        context = [_typo(s, rng) for s in context]
    if rng.random() < 0.12:
        problem = _typo(problem, rng)
    middle += context
    rng.shuffle(middle)

    body = [problem, *middle]
    if rng.random() < 0.25 and middle:
        body = [*middle[:1], problem, *middle[1:]]  # context first, then the problem
    if cue is not None:
        body.insert(0 if rng.random() < 0.3 else len(body), cue)

    lines = []
    if rng.random() < 0.75:
        lines.append(rng.choice(GREETINGS))
    lines.append(" ".join(body))
    if rng.random() < 0.8:
        lines.append(rng.choice(SIGNOFFS).format(name=rng.choice(NAMES)))
    text = ("\n" if rng.random() < 0.6 else " ").join(lines)
    if rng.random() < 0.15:
        text = f"Subject: {rng.choice(SUBJECTS[category])}\n{text}"
    answer = {
        "category": category,
        "priority": priority,
        "product": product.name if product else None,
        "order_id": order_id,
    }
    return Ticket(text, answer)


def generate(count: int, seed: int) -> list[dict]:
    """`count` chat examples (system, ticket, JSON answer) with no two tickets alike word for word."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < count:
        ticket = make_ticket(rng)
        if ticket.text in seen:
            continue
        seen.add(ticket.text)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": ticket.text},
                    {
                        "role": "assistant",
                        "content": json.dumps(ticket.answer, ensure_ascii=False, separators=(",", ":")),
                    },
                ]
            }
        )
    return rows


def schema() -> dict:
    """The JSON Schema every answer validates against."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Support ticket triage",
        "type": "object",
        "properties": {
            "category": {"enum": list(CATEGORIES)},
            "priority": {"enum": list(PRIORITIES)},
            "product": {"enum": [*PRODUCT_NAMES, None]},
            "order_id": {"anyOf": [{"type": "string", "pattern": "^ORD-[0-9]{5}$"}, {"type": "null"}]},
        },
        "required": ["category", "priority", "product", "order_id"],
        "additionalProperties": False,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="rows to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL file to write")
    parser.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA, help="where to write the answer's JSON Schema")
    parser.add_argument("--no-schema", action="store_true", help="do not write the JSON Schema")
    args = parser.parse_args(argv)

    rows = generate(args.count, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")
    if not args.no_schema:
        args.schema.parent.mkdir(parents=True, exist_ok=True)
        args.schema.write_text(json.dumps(schema(), indent=2) + "\n", encoding="utf-8", newline="\n")
        print(f"wrote {args.schema}")


if __name__ == "__main__":
    main()
