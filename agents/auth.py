"""Who may read what: service keys for back-end callers, listener tokens for listeners.

Two kinds of caller reach the API:

- **services** (a back end, a producer, ops tooling) send ``X-API-Key: <key>``, one of
  ``ENCORE_API_KEYS``. They may read and write any listener.
- **listeners** (the app on their device) send ``Authorization: Bearer <token>``. A token is a
  JWT (HS256) whose ``sub`` is the listener's id, issued by ``POST /v1/tokens`` to a service
  that has signed the listener in (or by ``encore token USER`` for a local try-out). A
  listener may read their own private data and send their own events, nothing of anyone else.

The signing secret is ``ENCORE_TOKEN_SECRET``; unset, it is derived from the first API key, so
a worker with keys can issue tokens with no more configuration (rotating that key then signs
every listener out). In production an OAuth 2.0 / OpenID Connect provider replaces the issuing
endpoint: its access tokens are JWTs too, and only :func:`listener_of` changes (verify with
the provider's keys instead of the shared secret).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from streams.settings import Settings

ISSUER = "encore"
AUDIENCE = "encore-listener"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a service (any listener) or one listener."""

    service: bool
    user: str | None = None

    def may_act_for(self, user: str) -> bool:
        return self.service or self.user == user


class Denied(Exception):
    """No or bad credentials (401), or credentials for someone else (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def signing_secret(settings: Settings) -> bytes | None:
    """The listener-token secret; None when the worker has neither a token secret nor API keys."""
    if settings.token_secret is not None and settings.token_secret.get_secret_value():
        return settings.token_secret.get_secret_value().encode()
    keys = sorted(settings.api_key_set())
    if not keys:
        return None
    return hmac.new(keys[0].encode(), b"encore listener tokens", hashlib.sha256).digest()


def issue(secret: bytes, user: str, ttl_s: float, now: datetime | None = None) -> tuple[str, datetime]:
    """A listener token for ``user`` valid ``ttl_s`` seconds: (token, expiry)."""
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_s)
    claims = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": int(now.timestamp()), "exp": int(expires.timestamp())}
    return jwt.encode(claims, secret, algorithm="HS256"), expires


def listener_of(secret: bytes, token: str) -> str:
    """The listener a token was issued to; raises :class:`Denied` (401) with the reason."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER,
                            options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise Denied(401, "listener token expired: ask the sign-in service for a new one (POST /v1/tokens)") from None
    except jwt.InvalidTokenError as exc:
        raise Denied(401, f"listener token refused ({exc})") from None
    return str(claims["sub"])


def caller(headers: object, keys: frozenset[str], secret: bytes | None) -> Caller:
    """The caller of a request from its headers; raises :class:`Denied` (401) when neither a
    valid service key nor a valid listener token is given."""
    get = headers.get  # type: ignore[attr-defined]
    key = get("X-API-Key", "")
    if key and any(hmac.compare_digest(key, k) for k in keys):
        return Caller(service=True)
    bearer = get("Authorization", "")
    if bearer.lower().startswith("bearer "):
        if secret is None:
            raise Denied(503 if not keys else 401, "listener tokens are not configured on this worker: set "
                         "ENCORE_TOKEN_SECRET or ENCORE_API_KEYS")
        return Caller(service=False, user=listener_of(secret, bearer[7:].strip()))
    if key:
        raise Denied(401, "wrong X-API-Key header")
    raise Denied(401, "send X-API-Key (services) or Authorization: Bearer <listener token> (listeners)")


def require(headers: object, keys: frozenset[str], secret: bytes | None, user: str | None = None) -> Caller:
    """The caller, who must be a service or, when ``user`` is given, that listener (403 otherwise)."""
    who = caller(headers, keys, secret)
    if user is not None and not who.may_act_for(user):
        raise Denied(403, f"this token is {who.user!r}'s; it cannot read or act for {user!r}")
    return who
