"""Voice profiles over HTTP: enroll by upload, list, rename, delete, each user apart, on the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from tests.support import ServerProcess, have_espeak, speak, token

SENTENCE = "The quick brown fox jumps over the lazy dog while the farmer watches from the barn."


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One person speaking in each of two espeak-ng voices (WAV and FLAC), and 4 s of silence."""
    if not have_espeak():
        pytest.fail("espeak-ng is not installed; `make test` installs it (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("enroll")
    out = {}
    for key, voice, fmt in (("wearer", "en-us", "wav"), ("diane", "en-us+f3", "flac")):
        path = folder / f"{key}.{fmt}"
        soundfile.write(path, speak(SENTENCE, voice, path) * 0.8, 16_000)
        out[key] = path
    out["silence"] = folder / "silence.wav"
    soundfile.write(out["silence"], np.zeros(16_000 * 4, dtype=np.float32), 16_000)
    return out


def call(server: ServerProcess, method: str, path: str, uid: str | None = "alice", **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token(uid)}"} if uid is not None else {}
    return httpx.request(method, f"{server.http}{path}", headers=headers, timeout=60, **kwargs)


def enroll(server: ServerProcess, path: Path, uid: str | None = "alice", **form: str) -> httpx.Response:
    return call(server, "POST", "/v1/speakers/enroll", uid, files={"file": (path.name, path.read_bytes())}, data=form)


def test_enroll_list_rename_and_delete(server: ServerProcess, recordings: dict[str, Path]):
    uid = "speakers-crud"
    me = enroll(server, recordings["wearer"], uid, me="true")
    assert me.status_code == 201, me.text
    wearer = me.json()
    assert set(wearer) == {"id", "name", "is_user", "seconds", "created_at", "updated_at"}  # no embedding
    assert (wearer["name"], wearer["is_user"]) == ("me", True)
    assert 3.0 < wearer["seconds"] < 6.0
    diane = enroll(server, recordings["diane"], uid, name="Diane").json()
    assert (diane["name"], diane["is_user"]) == ("Diane", False)
    # Enrolling a known name again, in another case, improves that profile.
    again = enroll(server, recordings["diane"], uid, name="diane")
    assert again.status_code == 201
    assert again.json()["id"] == diane["id"] and again.json()["seconds"] == pytest.approx(2 * diane["seconds"])
    listed = call(server, "GET", "/v1/speakers", uid).json()["items"]
    assert [(p["id"], p["name"]) for p in listed] == [(wearer["id"], "me"), (diane["id"], "Diane")]

    renamed = call(server, "PATCH", f"/v1/speakers/{diane['id']}", uid, json={"name": "Diane Smith"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Diane Smith"
    assert call(server, "GET", f"/v1/speakers/{diane['id']}", uid).json()["name"] == "Diane Smith"
    clash = call(server, "PATCH", f"/v1/speakers/{wearer['id']}", uid, json={"name": "diane smith"})
    assert clash.status_code == 409 and clash.json()["detail"] == "a speaker named 'diane smith' already exists"
    blank = call(server, "PATCH", f"/v1/speakers/{wearer['id']}", uid, json={"name": "  "})
    assert blank.status_code == 400 and blank.json()["detail"] == "a speaker name must not be empty"
    assert call(server, "PATCH", "/v1/speakers/no-such-id", uid, json={"name": "X"}).status_code == 404

    assert call(server, "DELETE", f"/v1/speakers/{diane['id']}", uid).status_code == 204
    assert call(server, "GET", f"/v1/speakers/{diane['id']}", uid).status_code == 404
    assert call(server, "DELETE", f"/v1/speakers/{diane['id']}", uid).status_code == 404
    assert [p["id"] for p in call(server, "GET", "/v1/speakers", uid).json()["items"]] == [wearer["id"]]


@pytest.mark.parametrize(
    ("form", "detail"),
    [
        ({}, "say whose voice this is: the form field 'name', or me=true for the wearer's own voice"),
        ({"me": "false"}, "say whose voice this is: the form field 'name', or me=true for the wearer's own voice"),
        ({"name": "Diane", "me": "true"}, "give either a name or me=true, not both"),
        ({"me": "perhaps"}, "me must be true or false, not 'perhaps'"),
        ({"name": " "}, "a speaker name must not be empty"),
        ({"name": "x" * 101}, "a speaker name may have at most 100 characters, not 101"),
    ],
)
def test_enroll_needs_exactly_one_of_a_name_and_me(
    server: ServerProcess, recordings: dict[str, Path], form: dict[str, str], detail: str
):
    response = enroll(server, recordings["wearer"], "speakers-form", **form)
    assert response.status_code == 400
    assert response.json()["detail"] == detail
    assert call(server, "GET", "/v1/speakers", "speakers-form").json()["items"] == []


def test_enroll_refuses_what_is_not_one_voice(server: ServerProcess, recordings: dict[str, Path], tmp_path: Path):
    uid = "speakers-bad"
    junk = tmp_path / "notes.wav"
    junk.write_bytes(b"RIFF but not really a wave file" * 100)
    garbage = enroll(server, junk, uid, name="Diane")
    assert garbage.status_code == 400
    assert garbage.json()["detail"] == (
        "the uploaded file 'notes.wav' is not audio we can read; send WAV, FLAC, MP3 or Ogg"
    )
    quiet = enroll(server, recordings["silence"], uid, me="true")
    assert quiet.status_code == 400
    assert quiet.json()["detail"] == (
        "only 0.0 s of speech found; enrolling a voice needs at least 2 s of one person speaking"
    )
    no_file = call(server, "POST", "/v1/speakers/enroll", uid, files={"name": (None, "Diane")})
    assert no_file.status_code == 400
    assert no_file.json()["detail"] == "send the recording in the multipart form field 'file'"
    empty = call(server, "POST", "/v1/speakers/enroll", uid, files={"file": ("empty.wav", b"")}, data={"me": "1"})
    assert empty.status_code == 400 and empty.json()["detail"] == "the uploaded file 'empty.wav' is empty"
    too_big = ("huge.wav", bytes(51 * 2**20))
    huge = call(server, "POST", "/v1/speakers/enroll", uid, files={"file": too_big}, data={"me": "1"})
    assert huge.status_code == 413
    assert huge.json()["detail"] == "the request body is larger than the 50 MiB this route accepts"
    assert call(server, "GET", "/v1/speakers", uid).json()["items"] == []


def test_every_route_needs_a_token(server: ServerProcess, recordings: dict[str, Path]):
    profile = enroll(server, recordings["wearer"], "speakers-auth", me="true").json()
    for method, path, kwargs in (
        ("GET", "/v1/speakers", {}),
        ("GET", f"/v1/speakers/{profile['id']}", {}),
        ("PATCH", f"/v1/speakers/{profile['id']}", {"json": {"name": "Eve"}}),
        ("DELETE", f"/v1/speakers/{profile['id']}", {}),
    ):
        response = call(server, method, path, None, **kwargs)
        assert response.status_code == 401, (method, path)
    assert enroll(server, recordings["wearer"], None, me="true").status_code == 401
    wrong = httpx.get(f"{server.http}/v1/speakers", headers={"Authorization": "Bearer not-the-key-alice"}, timeout=30)
    assert wrong.status_code == 401
    assert call(server, "GET", f"/v1/speakers/{profile['id']}", "speakers-auth").json()["name"] == "me"


def test_another_user_can_neither_see_nor_change_a_profile(server: ServerProcess, recordings: dict[str, Path]):
    owner, stranger = "speakers-owner", "speakers-stranger"
    profile = enroll(server, recordings["diane"], owner, name="Diane").json()
    path = f"/v1/speakers/{profile['id']}"
    assert call(server, "GET", "/v1/speakers", stranger).json()["items"] == []
    assert call(server, "GET", path, stranger).status_code == 404
    assert call(server, "PATCH", path, stranger, json={"name": "Mallory"}).status_code == 404
    assert call(server, "DELETE", path, stranger).status_code == 404
    # The stranger's own "Diane" is a different person.
    theirs = enroll(server, recordings["wearer"], stranger, name="Diane").json()
    assert theirs["id"] != profile["id"]
    mine = call(server, "GET", path, owner).json()
    assert (mine["name"], mine["seconds"]) == ("Diane", profile["seconds"])


def test_the_speaker_routes_are_documented(server: ServerProcess):
    spec = httpx.get(f"{server.http}/schema/openapi.json", timeout=30).json()
    operations = {
        (method.upper(), path): op
        for path, ops in spec["paths"].items()
        if path.startswith("/v1/speakers")
        for method, op in ops.items()
    }
    assert set(operations) == {
        ("POST", "/v1/speakers/enroll"),
        ("GET", "/v1/speakers"),
        ("GET", "/v1/speakers/{speaker_id}"),
        ("PATCH", "/v1/speakers/{speaker_id}"),
        ("DELETE", "/v1/speakers/{speaker_id}"),
    }
    for op in operations.values():
        assert op["tags"] == ["speakers"] and op["summary"]
    form = operations[("POST", "/v1/speakers/enroll")]["requestBody"]["content"]
    assert "multipart/form-data" in form
    assert httpx.get(f"{server.http}/docs", timeout=30).status_code == 200
