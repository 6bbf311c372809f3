"""Firebase ID tokens: RS256 JWTs against a JWKS served locally, as Google serves the real keys."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.service.auth import AuthError
from app.service.firebase import FirebaseVerifier, looks_like_jwt
from tests.support import free_port

PROJECT = "omi-app-test"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Jwks:
    """Serves the public half of ``keys`` as a JWKS with Cache-Control, and counts the fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {"k1": new_key()}
        self.fetches = 0
        self.port = free_port()
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                jwks.fetches += 1
                published = []
                for kid, key in jwks.keys.items():
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                    published.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
                data = json.dumps({"keys": published}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=19204, must-revalidate")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    served = Jwks()
    yield served
    served.server.shutdown()


def token(key: rsa.RSAPrivateKey, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "aud": PROJECT,
        "sub": "firebase-uid-1",
        "iat": now - 10,
        "exp": now + 3600,
        "auth_time": now - 10,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


async def test_a_valid_id_token_gives_its_uid_and_the_keys_are_cached(jwks: Jwks):
    verifier = FirebaseVerifier(PROJECT, jwks.url)
    signed = token(jwks.keys["k1"])
    assert looks_like_jwt(signed)
    assert await verifier.uid(signed) == "firebase-uid-1"
    assert await verifier.uid(token(jwks.keys["k1"], sub="someone-else")) == "someone-else"
    assert jwks.fetches == 1, "the keys are fetched once while Cache-Control allows"


async def test_rotated_keys_are_fetched_again(jwks: Jwks):
    verifier = FirebaseVerifier(PROJECT, jwks.url)
    assert await verifier.uid(token(jwks.keys["k1"])) == "firebase-uid-1"
    jwks.keys = {"k2": new_key()}  # Google rotated its keys
    verifier._fetched -= 60  # as if the last fetch were a minute ago
    assert await verifier.uid(token(jwks.keys["k2"], kid="k2")) == "firebase-uid-1"
    assert jwks.fetches == 2


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"aud": "another-project"}, "another Firebase project"),
        ({"iss": "https://securetoken.google.com/another-project"}, "not issued by Firebase for this project"),
        ({"sub": ""}, "Invalid token"),
    ],
    ids=["expired", "wrong audience", "wrong issuer", "no subject"],
)
async def test_expired_and_misdirected_tokens_are_refused(jwks: Jwks, claims: dict[str, Any], message: str):
    with pytest.raises(AuthError, match=message):
        await FirebaseVerifier(PROJECT, jwks.url).uid(token(jwks.keys["k1"], **claims))


async def test_expiry_has_a_small_leeway(jwks: Jwks):
    just_expired = token(jwks.keys["k1"], exp=int(time.time()) - 5)
    assert await FirebaseVerifier(PROJECT, jwks.url, leeway_s=30).uid(just_expired) == "firebase-uid-1"
    with pytest.raises(AuthError, match="expired"):
        await FirebaseVerifier(PROJECT, jwks.url, leeway_s=0).uid(just_expired)


async def test_forged_tokens_are_refused(jwks: Jwks):
    verifier = FirebaseVerifier(PROJECT, jwks.url)
    with pytest.raises(AuthError, match="signature does not verify"):
        await verifier.uid(token(new_key()))  # signed by someone else, claiming Google's key id
    with pytest.raises(AuthError, match="unknown key"):
        await verifier.uid(token(new_key(), kid="k9"))
    unsigned = jwt.encode({"sub": "x", "aud": PROJECT}, key=None, algorithm="none")
    with pytest.raises(AuthError, match="RS256"):
        await verifier.uid(unsigned)
    hs256 = jwt.encode({"sub": "x"}, "a-shared-secret-of-32-bytes-long!", algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(AuthError, match="RS256"):
        await verifier.uid(hs256)
    with pytest.raises(AuthError, match="not a JWT"):
        await verifier.uid("eyJ.not-a-token.x")


async def test_without_keys_tokens_cannot_be_verified(jwks: Jwks):
    with pytest.raises(AuthError, match="signing keys are unavailable"):
        await FirebaseVerifier(PROJECT, f"http://127.0.0.1:{free_port()}/jwks").uid(token(jwks.keys["k1"]))
