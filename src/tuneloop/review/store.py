"""The review store: one SQLite file per project (`<review.dir>/reviews.sqlite`).

Reviews, their items, the reviewers and every rating live here. The file runs in WAL mode so that
pages can be read while a rating is written, and every write is one transaction. A rating carries
a submission id chosen by the client: sending the same submission twice stores it once.

Tables:
  reviews    one row per review: its mode, systems, criteria, overlap, where it came from
  items      the prompts and candidate answers, with the hidden order in which they are shown
  reviewers  names and the SHA-256 of each token (the token itself is shown once, when created)
  ratings    one row per (review, item, reviewer): the latest rating, keyed by its submission id
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from tuneloop.errors import UserError

STORE_FILE = "reviews.sqlite"
SCHEMA_VERSION = 1
Mode = Literal["pairwise", "rubric", "ranking"]
MODES: tuple[Mode, ...] = ("pairwise", "rubric", "ranking")
CHOICES = ("A", "B", "tie", "both_bad")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reviews (
    name TEXT PRIMARY KEY, mode TEXT NOT NULL, systems TEXT NOT NULL, criteria TEXT NOT NULL,
    overlap INTEGER NOT NULL, seed INTEGER NOT NULL, source TEXT NOT NULL, created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    review TEXT NOT NULL REFERENCES reviews(name), idx INTEGER NOT NULL, item_id TEXT NOT NULL,
    conversation TEXT NOT NULL, reference TEXT, candidates TEXT NOT NULL, shown TEXT NOT NULL,
    PRIMARY KEY (review, idx)
);
CREATE TABLE IF NOT EXISTS reviewers (
    name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ratings (
    review TEXT NOT NULL, idx INTEGER NOT NULL, reviewer TEXT NOT NULL REFERENCES reviewers(name),
    submission TEXT NOT NULL UNIQUE, choice TEXT, scores TEXT, ranking TEXT, flags TEXT NOT NULL,
    comment TEXT NOT NULL, correction TEXT NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (review, idx, reviewer),
    FOREIGN KEY (review, idx) REFERENCES items(review, idx)
);
"""


@dataclass
class Candidate:
    """One answer to review: which system wrote it (hidden from reviewers), its text, and what the
    evaluation measured on it (metric scores, the judge's verdict), for comparing with the humans."""

    system: str
    text: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Item:
    """One thing to review: the prompt turns, an optional reference, the candidates, and `shown`:
    the candidates' indices in the order this item displays them (A, B, ... for reviewers)."""

    idx: int
    item_id: str
    conversation: list[dict[str, str]]
    reference: str | None
    candidates: list[Candidate]
    shown: list[int]


@dataclass
class Review:
    name: str
    mode: Mode
    systems: list[str]  # pairwise: [baseline, candidate]; the win rate is the candidate's
    criteria: list[str]
    overlap: int
    seed: int
    source: dict[str, Any]
    created: str


@dataclass
class Rating:
    """A reviewer's verdict on one item, in terms of systems (the letters are resolved on the server).

    `choice` is a system name, "tie" or "both_bad" (pairwise); `scores` maps criterion → 1-5 (rubric);
    `ranking` lists system names best first (ranking); `flags` maps system → raised flags.
    """

    review: str
    idx: int
    reviewer: str
    submission: str
    choice: str | None = None
    scores: dict[str, int] | None = None
    ranking: list[str] | None = None
    flags: dict[str, list[str]] = field(default_factory=dict)
    comment: str = ""
    correction: str = ""
    updated: str = ""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """The review database. Each method opens its own connection, so one Store can serve many threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never wait for a writer
            db.executescript(SCHEMA)
        finally:
            db.close()
        with self._connect() as db:
            version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(version[0]) != SCHEMA_VERSION:
                raise UserError(
                    f"{self.path} has review schema {version[0]}, this tuneloop reads {SCHEMA_VERSION}; "
                    "use the tuneloop version that created it"
                )

    @contextmanager
    def _connect(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction: committed on success, rolled back on any error.

        Writes take the write lock at once (BEGIN IMMEDIATE), so a read-then-write such as the
        submission check cannot interleave with another writer; reads do not block under WAL."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # ------------------------------------------------------------------ reviews and items

    def create_review(self, review: Review, items: list[Item]) -> None:
        """Store a new review and all its items in one transaction; an existing name is an error."""
        with self._connect() as db:
            if db.execute("SELECT 1 FROM reviews WHERE name=?", (review.name,)).fetchone():
                raise UserError(f"a review named {review.name!r} exists; pick another --name")
            db.execute(
                "INSERT INTO reviews VALUES (?,?,?,?,?,?,?,?)",
                (
                    review.name,
                    review.mode,
                    json.dumps(review.systems),
                    json.dumps(review.criteria),
                    review.overlap,
                    review.seed,
                    json.dumps(review.source),
                    review.created,
                ),
            )
            db.executemany(
                "INSERT INTO items VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        review.name,
                        it.idx,
                        it.item_id,
                        json.dumps(it.conversation, ensure_ascii=False),
                        it.reference,
                        json.dumps([vars(c) for c in it.candidates], ensure_ascii=False),
                        json.dumps(it.shown),
                    )
                    for it in items
                ],
            )

    def reviews(self) -> list[Review]:
        with self._connect(write=False) as db:
            rows = db.execute("SELECT * FROM reviews ORDER BY created, name").fetchall()
        return [_review(r) for r in rows]

    def review(self, name: str | None) -> Review:
        """The named review, or the newest one when `name` is None."""
        reviews = self.reviews()
        if not reviews:
            raise UserError(f"no review in {self.path}; create one with `tuneloop review create --from RUN`")
        if name is None:
            return reviews[-1]
        for r in reviews:
            if r.name == name:
                return r
        raise UserError(f"no review named {name!r}; reviews: {', '.join(r.name for r in reviews)}")

    def items(self, review: str) -> list[Item]:
        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT idx, item_id, conversation, reference, candidates, shown FROM items "
                "WHERE review=? ORDER BY idx",
                (review,),
            ).fetchall()
        return [
            Item(
                idx,
                item_id,
                json.loads(conv),
                ref,
                [Candidate(**c) for c in json.loads(cands)],
                json.loads(shown),
            )
            for idx, item_id, conv, ref, cands, shown in rows
        ]

    # ------------------------------------------------------------------ reviewers

    def add_reviewer(self, name: str) -> str:
        """Create a reviewer; return their token (only its hash is stored, so this is the one time it is seen)."""
        name = name.strip()
        if not name or len(name) > 64:
            raise UserError("a reviewer name must be 1-64 characters")
        token = secrets.token_urlsafe(24)
        with self._connect() as db:
            if db.execute("SELECT 1 FROM reviewers WHERE name=?", (name,)).fetchone():
                raise UserError(f"reviewer {name!r} exists; pick another name")
            db.execute("INSERT INTO reviewers VALUES (?,?,?)", (name, token_hash(token), now()))
        return token

    def reviewers(self) -> list[str]:
        """Reviewer names in the order they were added (the order that assigns items)."""
        with self._connect(write=False) as db:
            return [r[0] for r in db.execute("SELECT name FROM reviewers ORDER BY created, rowid")]

    def reviewer_for(self, token: str) -> str | None:
        with self._connect(write=False) as db:
            row = db.execute("SELECT name FROM reviewers WHERE token_sha256=?", (token_hash(token),)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ ratings

    def save_rating(self, rating: Rating) -> tuple[Rating, bool]:
        """Store a rating in one transaction; return (the stored rating, whether this call changed anything).

        A submission id seen before returns the rating stored then and changes nothing, so a double
        click or a retried request cannot duplicate or overwrite. A new submission for an item the
        reviewer rated before replaces their earlier rating (one rating per reviewer and item).
        """
        with self._connect() as db:
            row = db.execute("SELECT * FROM ratings WHERE submission=?", (rating.submission,)).fetchone()
            if row is not None:
                stored = _rating(row)
                if (stored.review, stored.idx, stored.reviewer) != (rating.review, rating.idx, rating.reviewer):
                    raise ValueError("submission_id was already used for another item; send a fresh one")
                return stored, False
            rating.updated = now()
            db.execute(
                "INSERT INTO ratings VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(review, idx, reviewer) DO UPDATE SET "
                "submission=excluded.submission, choice=excluded.choice, scores=excluded.scores, "
                "ranking=excluded.ranking, flags=excluded.flags, comment=excluded.comment, "
                "correction=excluded.correction, updated=excluded.updated",
                (
                    rating.review,
                    rating.idx,
                    rating.reviewer,
                    rating.submission,
                    rating.choice,
                    None if rating.scores is None else json.dumps(rating.scores),
                    None if rating.ranking is None else json.dumps(rating.ranking),
                    json.dumps(rating.flags),
                    rating.comment,
                    rating.correction,
                    rating.updated,
                ),
            )
        return rating, True

    def ratings(self, review: str, reviewer: str | None = None) -> list[Rating]:
        query, args = "SELECT * FROM ratings WHERE review=?", [review]
        if reviewer is not None:
            query += " AND reviewer=?"
            args.append(reviewer)
        with self._connect(write=False) as db:
            return [_rating(r) for r in db.execute(query + " ORDER BY idx, reviewer", args)]


def assigned(n_items: int, reviewers: list[str], reviewer: str, overlap: int) -> list[int]:
    """The items one reviewer sees, in order: item i goes to the `overlap` reviewers after position i mod R.

    With R reviewers (in the order they were added) each item is seen by min(overlap, R) of them,
    and every reviewer gets an equal share. Adding a reviewer re-deals the items; ratings already
    given stay (a reviewer keeps seeing the items they rated).
    """
    if reviewer not in reviewers:
        return []
    r, k = len(reviewers), min(overlap, len(reviewers))
    pos = reviewers.index(reviewer)
    return [i for i in range(n_items) if (pos - i) % r < k]


def _review(row: tuple) -> Review:
    name, mode, systems, criteria, overlap, seed, source, created = row
    return Review(name, mode, json.loads(systems), json.loads(criteria), overlap, seed, json.loads(source), created)


def _rating(row: tuple) -> Rating:
    review, idx, reviewer, submission, choice, scores, ranking, flags, comment, correction, updated = row
    return Rating(
        review,
        idx,
        reviewer,
        submission,
        choice,
        None if scores is None else json.loads(scores),
        None if ranking is None else json.loads(ranking),
        json.loads(flags),
        comment,
        correction,
        updated,
    )
