"""`tuneloop review serve`: the review web app (FastAPI, pages rendered on the server, no build step).

Every route needs a token. A reviewer opens their link (/login?token=...) once; the token then
rides in an HttpOnly, SameSite=Strict cookie (or an `Authorization: Bearer` header for scripts).
Admin routes need the admin key given to `review serve`; without one they are off. Pages escape
every piece of model text (Jinja autoescape) and forbid any script but their own (a per-response
CSP nonce). Bodies are capped; a bad rating is a 4xx naming the field and changes nothing.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from tuneloop.review.ratings import FLAGS, FieldError, letters, parse, to_letters, to_rating
from tuneloop.review.store import Review, Store, assigned

COOKIE = "tuneloop_review"
ADMIN_COOKIE = "tuneloop_review_admin"


@dataclass
class Settings:
    admin_key: str | None = None
    max_body_bytes: int = 64 * 1024


class HttpError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def create_app(store: Store, settings: Settings) -> FastAPI:
    """The review app over one store."""
    app = FastAPI(title="tuneloop review", docs_url=None, redoc_url=None, openapi_url=None)
    pages = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            return _error(request, HttpError(413, f"the request body is over {settings.max_body_bytes} bytes"))
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")  # the login link carries a token
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = pages.get_template(template).render(nonce=nonce, flags=FLAGS, **context)
        response = HTMLResponse(html, status_code=status)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
        return response

    def _error(request: Request, e: HttpError) -> Response:
        if request.url.path.startswith(("/api/", "/admin/")) or request.method != "GET":
            body = {"error": {"message": e.message, **({"field": e.field} if e.field else {})}}
            return JSONResponse(body, status_code=e.status)
        return page(request, "error.html.j2", e.status, message=e.message)

    @app.exception_handler(HttpError)
    async def http_error(request: Request, e: HttpError) -> Response:
        return _error(request, e)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "request"
        return _error(request, HttpError(422, f"'{where}': {first['msg']}", where))

    def reviewer(request: Request) -> str:
        token = _bearer(request) or request.cookies.get(COOKIE)
        name = store.reviewer_for(token) if token else None
        if name is None:
            raise HttpError(401, "open your reviewer link (ask the review's admin for one): every page needs it")
        return name

    def admin(request: Request) -> None:
        if settings.admin_key is None:
            raise HttpError(404, "admin pages are off; start `tuneloop review serve` with --admin-key")
        token = _bearer(request) or request.cookies.get(ADMIN_COOKIE) or ""
        if not hmac.compare_digest(token.encode(), settings.admin_key.encode()):
            raise HttpError(401, "admin pages need the admin key: open /login?token=<admin key>")

    def queue(review: Review, name: str) -> list[int]:
        """The items this reviewer sees: their share, plus any they rated before a re-deal."""
        n = len(store.items(review.name))
        rated = {r.idx for r in store.ratings(review.name, name)}
        return sorted(set(assigned(n, store.reviewers(), name, review.overlap)) | rated)

    def find_review(name: str) -> Review:
        for r in store.reviews():
            if r.name == name:
                return r
        raise HttpError(404, f"no review named {name!r}")

    @app.get("/login")
    def login(request: Request, token: str = "") -> Response:
        is_admin = settings.admin_key is not None and hmac.compare_digest(token.encode(), settings.admin_key.encode())
        if not is_admin and (not token or store.reviewer_for(token) is None):
            raise HttpError(401, "this link's token is unknown; ask the review's admin for a new link")
        response = RedirectResponse("/admin" if is_admin else "/", status_code=303)
        response.set_cookie(
            ADMIN_COOKIE if is_admin else COOKIE, token, httponly=True, samesite="strict", max_age=90 * 86400
        )
        return response

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        name = reviewer(request)
        rows = []
        for review in store.reviews():
            mine = queue(review, name)
            done = len({r.idx for r in store.ratings(review.name, name)} & set(mine))
            rows.append({"review": review, "total": len(mine), "done": done})
        return page(request, "home.html.j2", reviewer=name, rows=rows)

    @app.get("/r/{review_name}")
    def next_item(request: Request, review_name: str) -> Response:
        name = reviewer(request)
        review = find_review(review_name)
        mine = queue(review, name)
        rated = {r.idx for r in store.ratings(review.name, name)}
        pos = next((p for p, idx in enumerate(mine) if idx not in rated), None)
        if pos is None:
            return page(request, "done.html.j2", reviewer=name, review=review, total=len(mine))
        return RedirectResponse(f"/r/{review.name}/{pos}", status_code=303)

    @app.get("/r/{review_name}/{pos}", response_class=HTMLResponse)
    def show(request: Request, review_name: str, pos: int) -> Response:
        name = reviewer(request)
        review = find_review(review_name)
        mine = queue(review, name)
        if not 0 <= pos < len(mine):
            raise HttpError(404, f"item {pos} is not in your queue of {len(mine)}")
        item = store.items(review.name)[mine[pos]]
        ratings = {r.idx: r for r in store.ratings(review.name, name)}
        done = len(set(ratings) & set(mine))
        previous = to_letters(item, ratings[item.idx]) if item.idx in ratings else None
        state = {
            "mode": review.mode,
            "letters": letters(item),
            "criteria": review.criteria,
            "api": f"/api/r/{review.name}/{pos}",
            "next": f"/r/{review.name}/{pos + 1}" if pos + 1 < len(mine) else f"/r/{review.name}",
            "prev": f"/r/{review.name}/{pos - 1}" if pos > 0 else None,
            "rating": previous,
            "answers": [item.candidates[i].text for i in item.shown],
        }
        return page(
            request,
            "item.html.j2",
            reviewer=name,
            review=review,
            item=item,
            answers=list(zip(letters(item), state["answers"], strict=True)),
            pos=pos,
            total=len(mine),
            done=done,
            state=state,
        )

    @app.post("/api/r/{review_name}/{pos}")
    async def rate(request: Request, review_name: str, pos: int) -> JSONResponse:
        name = reviewer(request)
        review = find_review(review_name)
        raw = await _read(request, settings.max_body_bytes)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HttpError(415, "send the rating as JSON (Content-Type: application/json)", "body")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HttpError(400, f"the request body is not valid JSON: {e}", "body") from None
        mine = queue(review, name)
        if not 0 <= pos < len(mine):
            raise HttpError(404, f"item {pos} is not in your queue of {len(mine)}", "pos")
        item = store.items(review.name)[mine[pos]]
        try:
            rating = to_rating(review, item, name, parse(data))
            stored, changed = store.save_rating(rating)
        except FieldError as e:
            raise HttpError(422, str(e), e.field) from None
        except ValueError as e:  # a submission id reused for another item
            raise HttpError(409, str(e), "submission_id") from None
        return JSONResponse({"saved": changed, "submission_id": stored.submission, "updated": stored.updated})

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request) -> Response:
        admin(request)
        names = store.reviewers()
        reviews = []
        for review in store.reviews():
            counts = {n: 0 for n in names}
            for r in store.ratings(review.name):
                counts[r.reviewer] = counts.get(r.reviewer, 0) + 1
            n = len(store.items(review.name))
            reviews.append(
                {
                    "review": review,
                    "items": n,
                    "counts": counts,
                    "shares": {x: len(assigned(n, names, x, review.overlap)) for x in names},
                }
            )
        return page(request, "admin.html.j2", reviewers=names, reviews=reviews)

    @app.post("/admin/reviewers")
    async def add_reviewer(request: Request) -> JSONResponse:
        admin(request)
        raw = await _read(request, settings.max_body_bytes)
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HttpError(400, 'send {"name": "..."} as JSON', "body") from None
        new = data.get("name") if isinstance(data, dict) else None
        if not isinstance(new, str) or not new.strip() or len(new.strip()) > 64:
            raise HttpError(422, "'name' must be 1-64 characters", "name")
        if new.strip() in store.reviewers():
            raise HttpError(409, f"reviewer {new.strip()!r} exists", "name")
        token = store.add_reviewer(new)
        return JSONResponse({"name": new.strip(), "link": f"{str(request.base_url).rstrip('/')}/login?token={token}"})

    return app


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _read(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it grows past `limit`, declared length or not."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"the request body is over {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)
