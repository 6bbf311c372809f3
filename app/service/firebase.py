"""Firebase ID tokens, as the OMI app sends them: RS256 JWTs checked against Google's published keys.

A token is accepted when its signature verifies with a key from the JWKS URL (cached for as long
as the response's ``Cache-Control: max-age`` says, and fetched again when a token names a key
id the cache does not hold: Google rotates its keys), its audience is the Firebase project id, its
issuer ``https://securetoken.google.com/<project id>``, it has not expired (with a small leeway),
and its subject (the uid) is not empty.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import jwt

from core.errors import AuthError

__all__ = ["GOOGLE_JWKS_URL", "FirebaseVerifier", "looks_like_jwt"]

GOOGLE_JWKS_URL = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"
DEFAULT_MAX_AGE_S = 3600.0
REFETCH_AFTER_S = 30.0  # an unknown key id fetches the keys again at most this often
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has the shape of a JWT (three base64url parts)."""
    return token.startswith("eyJ") and bool(_JWT.match(token))


class FirebaseVerifier:
    """Verifies Firebase ID tokens of one project; safe to share between requests."""

    def __init__(self, project_id: str, jwks_url: str = GOOGLE_JWKS_URL, *, leeway_s: float = 30.0) -> None:
        self.project_id = project_id
        self.jwks_url = jwks_url
        self.leeway_s = leeway_s
        self._keys: dict[str, Any] = {}
        self._expires = 0.0
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def uid(self, token: str) -> str:
        """The uid (``sub``) of a valid token.

        Raises:
            AuthError: the token is malformed, forged, expired, for another project, or the keys
                cannot be fetched; the message says which, and is safe to show.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("Invalid token: not a JWT") from None
        if header.get("alg") != "RS256":
            raise AuthError("Invalid token: Firebase ID tokens are signed with RS256")
        key = await self._key(str(header.get("kid") or ""))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.project_id,
                issuer=f"https://securetoken.google.com/{self.project_id}",
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("Invalid token: it has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("Invalid token: it is for another Firebase project") from None
        except jwt.InvalidIssuerError:
            raise AuthError("Invalid token: it was not issued by Firebase for this project") from None
        except jwt.InvalidSignatureError:
            raise AuthError("Invalid token: the signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"Invalid token: {exc}") from None
        uid = claims.get("sub")
        if not isinstance(uid, str) or not uid or len(uid) > 128:
            raise AuthError("Invalid token: no user id (sub)")
        return uid

    async def _key(self, kid: str) -> Any:
        now = time.monotonic()
        if kid in self._keys and now < self._expires:
            return self._keys[kid]
        async with self._lock:
            stale = time.monotonic() >= self._expires
            unknown = kid not in self._keys and time.monotonic() - self._fetched >= REFETCH_AFTER_S
            if stale or unknown:
                await self._fetch()
        if kid not in self._keys:
            raise AuthError("Invalid token: signed with an unknown key")
        return self._keys[kid]

    async def _fetch(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(self.jwks_url)
                response.raise_for_status()
                keys = {
                    str(k["kid"]): jwt.PyJWK(k, algorithm="RS256").key for k in response.json()["keys"] if "kid" in k
                }
        except (httpx.HTTPError, ValueError, KeyError, jwt.PyJWTError) as exc:
            if self._keys:  # keep the keys we have; try again later
                self._fetched = time.monotonic()
                return
            raise AuthError(
                f"Cannot verify tokens now: the signing keys are unavailable ({type(exc).__name__})"
            ) from exc
        match = re.search(r"max-age=(\d+)", response.headers.get("cache-control", ""))
        self._keys = keys
        self._fetched = time.monotonic()
        self._expires = self._fetched + (float(match.group(1)) if match else DEFAULT_MAX_AGE_S)
