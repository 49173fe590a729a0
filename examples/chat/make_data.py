"""Generate synthetic support-chat conversations for the chat example, deterministically.

The assistant answers for Larkspur, a fictional company with three software products (Nimbus
Drive, LedgerLite, TaskPilot) and three devices (Beacon Hub, PocketPOS, Orbit Speaker). Every
answer comes from the small policy and product sheet written into INTENTS below, so the facts a
tuned model should learn (where a setting is, how long a refund takes, how to reset a device) are
consistent across the whole file. Conversations have one to five exchanges: a question, often
follow-ups on the same topic, sometimes a second topic, and now and then a thank-you.

    python examples/chat/make_data.py            # writes examples/chat/data/conversations.jsonl

The same arguments always give a byte-identical file.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "conversations.jsonl"
DEFAULT_SEED = 11
DEFAULT_COUNT = 360
MAX_SIMILARITY = 0.75

SYSTEM_PROMPT = "You are the support assistant for Larkspur. Answer briefly, politely and only with what you know."

SOFTWARE = ("Nimbus Drive", "LedgerLite", "TaskPilot")
DEVICES = ("Beacon Hub", "PocketPOS", "Orbit Speaker")


@dataclass(frozen=True)
class Exchange:
    """A user turn and the assistant's reply, each with paraphrases; {product} is filled per conversation."""

    asks: tuple[str, ...]
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Intent:
    name: str
    products: tuple[str, ...]  # products the topic applies to; empty: no product is mentioned
    first: Exchange
    follow_ups: tuple[Exchange, ...] = field(default_factory=tuple)


INTENTS = (
    Intent(
        "password",
        SOFTWARE,
        Exchange(
            (
                "How do I reset my password for {product}?",
                "I forgot my {product} password. What now?",
                "can't remember my password for {product}, help",
                "Where do I change my password in {product}?",
            ),
            (
                "Open {product}, go to Settings → Security and choose Reset password. "
                "We send you a link that stays valid for 30 minutes.",
                "On the {product} sign-in page, click 'Forgot password'. The reset link we send is "
                "valid for 30 minutes.",
                "You can reset it under Settings → Security → Reset password in {product}; "
                "the link expires after 30 minutes.",
            ),
        ),
        (
            Exchange(
                ("The link says it has expired.", "I clicked the link but it says expired."),
                (
                    "Links expire after 30 minutes. Request a new one and open it straight away.",
                    "That happens after 30 minutes. Please request a fresh link and use it right away.",
                ),
            ),
            Exchange(
                ("I never got the reset message.", "Nothing has arrived in my inbox."),
                (
                    "Check your spam folder first. If it isn't there, make sure you used the address your account "
                    "is registered with, then request the link again.",
                    "It can land in spam. If it's not there either, request it again with the exact address on your "
                    "account.",
                ),
            ),
        ),
    ),
    Intent(
        "two_factor",
        SOFTWARE,
        Exchange(
            (
                "How do I turn on two-factor authentication in {product}?",
                "Does {product} support 2FA?",
                "I'd like to make my {product} login more secure.",
            ),
            (
                "Yes. Go to Settings → Security → Two-factor and scan the code with an authenticator app. "
                "Save the backup codes we show you.",
                "Turn it on under Settings → Security → Two-factor: scan the QR code with any authenticator app "
                "and keep the backup codes somewhere safe.",
            ),
        ),
        (
            Exchange(
                ("What if I lose my phone?", "And if my phone breaks?"),
                (
                    "Sign in with one of your backup codes, then set up two-factor again on the new phone.",
                    "Use a backup code to get in, then re-enrol the new phone under Settings → Security.",
                ),
            ),
        ),
    ),
    Intent(
        "refund_subscription",
        SOFTWARE,
        Exchange(
            (
                "Can I get a refund for my {product} subscription?",
                "I was charged for {product} but I don't use it any more. Refund?",
                "I want my money back for this month of {product}.",
            ),
            (
                "Subscriptions can be refunded within 14 days of the charge. Open Billing → Invoices, pick the "
                "charge and choose Request refund.",
                "Yes, if the charge is less than 14 days old: Billing → Invoices → Request refund.",
            ),
        ),
        (
            Exchange(
                ("How long does the refund take?", "When will I see the money?"),
                (
                    "Refunds reach your account within 5 to 7 business days.",
                    "Usually 5 to 7 business days, depending on your bank.",
                ),
            ),
            Exchange(
                ("The charge was three weeks ago.", "It's been more than 14 days, is that a problem?"),
                (
                    "After 14 days we can't refund the charge, but you can cancel so you aren't billed again.",
                    "Sorry, refunds are only possible within 14 days. Cancelling now stops the next charge.",
                ),
            ),
        ),
    ),
    Intent(
        "return_device",
        DEVICES,
        Exchange(
            (
                "How do I return my {product}?",
                "The {product} isn't for me. Can I send it back?",
                "I'd like to return the {product} I bought last week.",
            ),
            (
                "You can return a device within 30 days. Go to Orders, choose the {product} and click Return to "
                "print a free label.",
                "Yes, within 30 days of delivery. Open Orders → {product} → Return and we'll give you a prepaid label.",
            ),
        ),
        (
            Exchange(
                ("Do I need the original box?", "I threw away the packaging, is that okay?"),
                (
                    "The original box is preferred but not required. Pack it safely so it isn't damaged in transit.",
                    "That's fine. Any sturdy box works, as long as the device is protected.",
                ),
            ),
            Exchange(
                ("When do I get my money back?", "How long until the refund?"),
                (
                    "We refund within 5 to 7 business days after the device reaches our warehouse.",
                    "Once it arrives at our warehouse, the refund takes 5 to 7 business days.",
                ),
            ),
        ),
    ),
    Intent(
        "shipping_time",
        DEVICES,
        Exchange(
            (
                "How long does delivery of the {product} take?",
                "When will my {product} arrive?",
                "what are your shipping times for the {product}",
            ),
            (
                "Standard delivery takes 3 to 5 business days and express 1 to 2. "
                "The tracking link is in your order confirmation.",
                "Usually 3 to 5 business days with standard shipping, 1 to 2 with express. "
                "You can follow it with the tracking link in the confirmation.",
            ),
        ),
        (
            Exchange(
                ("Can I still switch to express?", "Is upgrading to express possible now?"),
                (
                    "Only before the order ships. Open Orders and choose Change delivery if the option is still shown.",
                    "Yes, as long as it hasn't shipped yet: Orders → Change delivery.",
                ),
            ),
            Exchange(
                ("Do you ship abroad?", "Can you deliver outside the country?"),
                (
                    "We ship to most of Europe and North America; the checkout shows whether your address is covered.",
                    "Yes, to most countries in Europe and North America. Checkout tells you if yours is included.",
                ),
            ),
        ),
    ),
    Intent(
        "tracking",
        DEVICES,
        Exchange(
            (
                "My tracking hasn't updated for days. Where is my {product}?",
                "The tracking for my {product} is stuck.",
                "It says 'in transit' since Monday, is my {product} lost?",
            ),
            (
                "Sorry about the wait. If tracking hasn't moved for 5 business days, reply with your order ID and "
                "we'll open an investigation with the courier.",
                "Tracking can pause while a parcel changes hands. After 5 business days without an update, send us "
                "the order ID and we'll chase the courier.",
            ),
        ),
        (
            Exchange(
                ("And if it's really lost?", "What happens if they can't find it?"),
                (
                    "Then we send a replacement or refund you, whichever you prefer.",
                    "If the courier can't find it, you choose: a new {product} or a full refund.",
                ),
            ),
        ),
    ),
    Intent(
        "invoice",
        SOFTWARE,
        Exchange(
            (
                "Where can I download my invoices for {product}?",
                "I need an invoice for {product} for my accountant.",
                "how do I get a PDF invoice for {product}",
            ),
            (
                "Go to Billing → Invoices and click Download next to each one. They are PDFs.",
                "All invoices are under Billing → Invoices, each with a PDF download.",
            ),
        ),
        (
            Exchange(
                ("Can you add our VAT number?", "The invoice needs our company tax number."),
                (
                    "Add it under Billing → Company details. It appears on every invoice from then on.",
                    "Enter it in Billing → Company details; new invoices will show it.",
                ),
            ),
            Exchange(
                ("Can I change the address on an old invoice?", "An older invoice has the wrong address."),
                (
                    "Update the address in Billing → Company details, then use Reissue on the old invoice.",
                    "Correct the address first, then click Reissue next to that invoice.",
                ),
            ),
        ),
    ),
    Intent(
        "plans",
        SOFTWARE,
        Exchange(
            (
                "What's the difference between the {product} plans?",
                "Which {product} plan do I need for a team?",
                "Explain the {product} plans please.",
            ),
            (
                "Starter is for one person, Team adds shared workspaces for up to 50 users, and Business adds SSO "
                "and audit logs. Prices for your region are on the Billing page.",
                "There are three: Starter for individuals, Team for up to 50 users with shared workspaces, Business "
                "with SSO and audit logs on top.",
            ),
        ),
        (
            Exchange(
                ("How do I upgrade?", "Can I switch plans in the middle of the month?"),
                (
                    "Go to Billing → Plan and choose the new plan. You pay only the prorated "
                    "difference for this month.",
                    "Any time, under Billing → Plan. The difference is prorated to the day.",
                ),
            ),
        ),
    ),
    Intent(
        "cancel",
        SOFTWARE,
        Exchange(
            (
                "How do I cancel {product}?",
                "I want to stop my {product} subscription.",
                "please cancel my {product} plan",
            ),
            (
                "You can cancel under Billing → Plan → Cancel plan. Everything stays readable until the end of the "
                "period you paid for.",
                "Go to Billing → Plan and choose Cancel plan. You keep access until the paid period ends.",
            ),
        ),
        (
            Exchange(
                ("What happens to my data?", "Will my files be deleted?"),
                (
                    "Your data is kept for 30 days after the period ends, so you can export it or come back.",
                    "Nothing is deleted straight away: we keep it for 30 days after the paid period.",
                ),
            ),
        ),
    ),
    Intent(
        "sync",
        ("Nimbus Drive",),
        Exchange(
            (
                "Nimbus Drive sync is stuck. What can I do?",
                "My files aren't syncing in Nimbus Drive.",
                "Nimbus Drive keeps saying 'syncing' forever.",
            ),
            (
                "Pause and resume sync from the Nimbus Drive menu, then check that the disk has free space. "
                "That fixes most stuck syncs.",
                "First pause and resume sync, then make sure your disk isn't full. Most stuck syncs clear after that.",
            ),
        ),
        (
            Exchange(
                ("Still stuck after that.", "That didn't work."),
                (
                    "Then open Help → Send logs in the app and reply here; we'll look at what is blocking it.",
                    "Please send us the logs with Help → Send logs, and we'll find the file that is holding it up.",
                ),
            ),
            Exchange(
                ("Is there a file size limit?", "Can I upload a 10 GB video?"),
                (
                    "The browser takes files up to 5 GB; the desktop app has no limit because it splits large files.",
                    "Up to 5 GB in the browser. For bigger files use the desktop app, which has no limit.",
                ),
            ),
        ),
    ),
    Intent(
        "deleted_files",
        ("Nimbus Drive",),
        Exchange(
            (
                "I deleted a folder in Nimbus Drive by mistake. Can I get it back?",
                "How do I restore a deleted file in Nimbus Drive?",
            ),
            (
                "Yes, if it was deleted in the last 30 days: open Trash, select it and choose Restore.",
                "Deleted items stay in Trash for 30 days. Select the folder there and click Restore.",
            ),
        ),
        (
            Exchange(
                ("It was about six weeks ago.", "What if it's older than a month?"),
                (
                    "After 30 days items are removed from Trash for good, so we can't restore them, sorry.",
                    "Unfortunately Trash only keeps items for 30 days, so that folder can't be recovered.",
                ),
            ),
        ),
    ),
    Intent(
        "export",
        ("LedgerLite", "TaskPilot"),
        Exchange(
            (
                "How do I export my data from {product}?",
                "Can I get my {product} data as a spreadsheet?",
                "export to csv from {product}?",
            ),
            (
                "Go to Reports → Export in {product} and choose CSV or Excel. Large exports are emailed as a link.",
                "Yes: Reports → Export, then pick CSV or Excel. Big exports arrive as a download link.",
            ),
        ),
        (
            Exchange(
                ("The CSV only has the header row.", "My export file is empty."),
                (
                    "That happens when the date filter excludes everything. Set the range to All "
                    "time and export again.",
                    "Check the date range at the top of the export page; All time includes everything.",
                ),
            ),
        ),
    ),
    Intent(
        "invite",
        ("TaskPilot", "Nimbus Drive"),
        Exchange(
            (
                "How do I add people to our {product} workspace?",
                "I want to invite my team to {product}.",
                "how to invite a colleague to {product}",
            ),
            (
                "Open Workspace → Members and click Invite. Invitations are valid for 7 days.",
                "Go to Workspace → Members → Invite and enter their addresses; the invite stays valid for 7 days.",
            ),
        ),
        (
            Exchange(
                ("The invite button is greyed out.", "I can't click Invite."),
                (
                    "Only admins can invite. Ask an admin to make you one under Workspace → Members.",
                    "That means you're not an admin. An admin can change your role in Workspace → Members.",
                ),
            ),
            Exchange(
                ("How do I remove someone who left?", "A colleague left, how do I take away their access?"),
                (
                    "In Workspace → Members, open their name and choose Remove. Their files stay in the workspace.",
                    "Open Workspace → Members, pick the person and click Remove; their work stays behind.",
                ),
            ),
        ),
    ),
    Intent(
        "hub_reset",
        ("Beacon Hub",),
        Exchange(
            (
                "How do I reset my Beacon Hub?",
                "The Beacon Hub is unresponsive. Factory reset?",
                "My Beacon Hub light blinks red and nothing works.",
            ),
            (
                "Hold the button on the back for 10 seconds until the light blinks blue, then set it up again "
                "in the app.",
                "Press and hold the rear button for 10 seconds. When the light blinks blue, it's reset and ready "
                "for setup.",
            ),
        ),
        (
            Exchange(
                ("It won't join my wifi.", "Setup can't find my network."),
                (
                    "The Beacon Hub only uses 2.4 GHz wifi. Make sure your router has a 2.4 GHz network switched on.",
                    "It needs a 2.4 GHz network; 5 GHz-only routers won't show up.",
                ),
            ),
        ),
    ),
    Intent(
        "pos_not_ready",
        ("PocketPOS",),
        Exchange(
            (
                "My PocketPOS says 'terminal not ready'.",
                "PocketPOS won't take card payments.",
                "Card payments fail on the PocketPOS.",
            ),
            (
                "Open the Larkspur app, remove the PocketPOS under Devices and pair it again, then install any "
                "firmware update it offers.",
                "Re-pair it: Devices → PocketPOS → Remove, then add it again and accept the firmware update.",
            ),
        ),
        (
            Exchange(
                ("How do I charge it?", "The battery is flat quickly."),
                (
                    "Use the USB-C cable; a full charge takes about 2 hours and lasts a working day.",
                    "Charge it with USB-C for about 2 hours. That covers a normal working day.",
                ),
            ),
        ),
    ),
    Intent(
        "speaker_pairing",
        ("Orbit Speaker",),
        Exchange(
            (
                "How do I pair the Orbit Speaker with my phone?",
                "My phone can't find the Orbit Speaker.",
                "Orbit Speaker won't connect over bluetooth.",
            ),
            (
                "Hold the play button for 5 seconds until you hear a tone, then pick Orbit Speaker in your phone's "
                "bluetooth list.",
                "Press and hold play for 5 seconds; after the tone it appears in your phone's bluetooth settings.",
            ),
        ),
        (
            Exchange(
                ("How long does the battery last?", "What's the battery life?"),
                (
                    "About 12 hours at normal volume.",
                    "Roughly 12 hours of playback on a full charge.",
                ),
            ),
        ),
    ),
    Intent(
        "warranty",
        DEVICES,
        Exchange(
            (
                "What warranty does the {product} have?",
                "My {product} broke after a year. Is it covered?",
                "Is there a guarantee on the {product}?",
            ),
            (
                "Every Larkspur device has a 2-year warranty. Start a claim under Orders → {product} → Warranty.",
                "Yes, devices are covered for 2 years. Open the order and choose Warranty to start a claim.",
            ),
        ),
        (
            Exchange(
                ("Do I need the receipt?", "I don't have the receipt any more."),
                (
                    "No, the order in your account is enough proof of purchase.",
                    "Not if you bought it from us: your order history counts as the receipt.",
                ),
            ),
        ),
    ),
    Intent(
        "payment_method",
        (),
        Exchange(
            (
                "How do I change the card on my account?",
                "My card expired, where do I update it?",
                "Can I pay by bank transfer?",
            ),
            (
                "Go to Billing → Payment method to add a new card or switch to bank transfer for annual plans.",
                "Under Billing → Payment method you can replace the card, or choose bank transfer if you pay yearly.",
            ),
        ),
        (
            Exchange(
                ("Will my subscription be interrupted?", "Do I lose access while I change it?"),
                (
                    "No, your plan keeps running; the next charge simply uses the new method.",
                    "Not at all. Nothing changes except where the next payment comes from.",
                ),
            ),
        ),
    ),
    Intent(
        "support_hours",
        (),
        Exchange(
            (
                "When is support available?",
                "How fast do you usually reply?",
                "Do you have phone support?",
            ),
            (
                "We answer chat and tickets within one business day, Monday to Friday. There is no phone line.",
                "Support works Monday to Friday and replies within one business day, by chat or ticket only.",
            ),
        ),
    ),
    Intent(
        "delete_account",
        SOFTWARE,
        Exchange(
            (
                "How do I delete my {product} account?",
                "Please remove my account and all my data from {product}.",
            ),
            (
                "Go to Settings → Account → Delete account. Your data is erased within 30 days, and this can't be "
                "undone.",
                "Use Settings → Account → Delete account. Everything is permanently erased within 30 days.",
            ),
        ),
        (
            Exchange(
                ("Can I download my data first?", "I want a copy before deleting."),
                (
                    "Yes: Settings → Account → Download my data prepares an archive for you.",
                    "Use Download my data in the same Account page first; we prepare an archive.",
                ),
            ),
        ),
    ),
)

OPENERS = ("", "", "", "Hi! ", "Hello, ", "Hey, ", "Quick question: ", "Hi there. ", "Good morning. ")
THANKS = (
    "Thanks, that helped.",
    "Great, thank you!",
    "Perfect, thanks.",
    "ok got it, thanks",
    "That's all I needed.",
    "Thanks for the quick answer.",
)
CLOSINGS = (
    "Glad I could help. Have a good day!",
    "You're welcome. Is there anything else I can do?",
    "Happy to help. Just write again if anything comes up.",
    "You're welcome!",
)


def _fill(text: str, product: str) -> str:
    return text.format(product=product)


def conversation(rng: random.Random) -> list[dict[str, str]]:
    """One conversation: system prompt, then one to five exchanges ending with the assistant."""
    intent = rng.choice(INTENTS)
    product = rng.choice(intent.products) if intent.products else ""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]

    def exchange(ex: Exchange, opener: str = "") -> None:
        messages.append({"role": "user", "content": opener + _fill(rng.choice(ex.asks), product)})
        messages.append({"role": "assistant", "content": _fill(rng.choice(ex.answers), product)})

    exchange(intent.first, rng.choice(OPENERS))
    if intent.follow_ups and rng.random() < 0.65:
        for ex in rng.sample(intent.follow_ups, k=rng.randint(1, len(intent.follow_ups))):
            exchange(ex)
    if rng.random() < 0.25:
        # A second topic in the same chat, about a product of its own.
        other = rng.choice([i for i in INTENTS if i.name != intent.name])
        product = rng.choice(other.products) if other.products else ""
        exchange(other.first, rng.choice(("Another thing: ", "Also, ", "One more question. ", "")))
    if rng.random() < 0.15:
        messages.append({"role": "user", "content": rng.choice(THANKS)})
        messages.append({"role": "assistant", "content": rng.choice(CLOSINGS)})
    return messages


def _shingles(messages: list[dict[str, str]]) -> set[tuple[str, ...]]:
    """Word 3-grams of the whole conversation, lowercased: what near-duplicate detection compares."""
    words = re.findall(r"\w+", " ".join(f"{m['role']} {m['content']}" for m in messages).lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def generate(count: int, seed: int) -> list[dict]:
    """`count` conversations from `seed`, no two of them near duplicates.

    Conversations built from the same few sentences can differ by a greeting only; the data stage
    would drop those (MinHash, Jaccard 0.85 on word 3-grams), so they are skipped here, with a margin
    for the MinHash estimate's noise.
    """
    rng = random.Random(seed)
    rows: list[dict] = []
    kept: list[set[tuple[str, ...]]] = []
    while len(rows) < count:
        messages = conversation(rng)
        grams = _shingles(messages)
        if any(len(grams & other) / len(grams | other) >= MAX_SIMILARITY for other in kept):
            continue
        kept.append(grams)
        rows.append({"messages": messages})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="conversations to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL file to write")
    args = parser.parse_args(argv)
    rows = generate(args.count, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} conversations to {args.out}")


if __name__ == "__main__":
    main()
