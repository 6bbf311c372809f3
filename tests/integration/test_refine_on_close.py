"""The refinement pass on a real server: a closing conversation's speech is transcribed again, then dropped."""

from __future__ import annotations

from pathlib import Path

from app.cli.simulator import simulate
from tests.conftest import FAST
from tests.support import ServerProcess, Turn, token, wer


async def test_closing_transcribes_the_kept_speech_again(tmp_path: Path, dialogue: tuple[Path, list[Turn]]):
    server = ServerProcess(tmp_path, env={**FAST, "STT_REFINE_BACKEND": "faster-whisper"}).start()
    try:
        await simulate(dialogue[0], server.ws, token=token("refine"), speed=2, settle_s=3)
        [listed] = server.get("/v1/conversations/page", uid="refine").json()["items"]
        closed = server.post(f"/v1/conversations/{listed['id']}/close", uid="refine").json()
        segments = closed["transcript_segments"]
        assert server.metric("refine_segments_total") >= 1, server.log()[-2000:]
        assert server.metric("refine_segments_total") <= len(segments)
        text = " ".join(s["text"] for s in segments)
        assert wer(" ".join(t.text for t in dialogue[1]), text) < 0.35
        assert "clinic" not in server.log(), "no transcript text in the log"
    finally:
        server.stop()
