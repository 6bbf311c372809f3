"""The web page at ``/`` in a real browser (Debian's Chromium, driven by Playwright) on a phone-sized screen.

Sign in with an API token, watch the dialogue appear live as a device streams it, search for it,
rename a speaker in the conversation, and chat with the agent. Screenshots land in
``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from app.cli.simulator import simulate
from app.ops.letta_local import LocalLetta
from tests.integration.test_live import api_token
from tests.support import ROOT, ServerProcess, Turn, token

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the browser test needs the `playwright` package (pip install -e '.[dev]')"
)
from playwright.async_api import Page, expect  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
)


@asynccontextmanager
async def phone(server: ServerProcess) -> AsyncIterator[tuple[Page, list[str]]]:
    """The page open in headless Chromium at 390×844, and the errors its console reports."""
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            page = await context.new_page()
            errors: list[str] = []
            # Script errors and refused content (CSP); a 401 or 503 the page expects is not one.
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource")
                    else None
                ),
            )
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{server.http}/")
            yield page, errors
        finally:
            await browser.close()


async def sign_in(page: Page, bearer: str) -> None:
    await page.get_by_label("API token").fill(bearer)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#live-status")).to_have_text("Listening", timeout=10_000)


async def screenshot(page: Page, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\n  screenshot: {path}")
    return path


async def fits_the_screen(page: Page) -> bool:
    return bool(await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


async def test_live_transcript_search_and_renaming_on_a_phone(
    server: ServerProcess,
    dialogue: tuple[Path, list[Turn]],
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
):
    uid = f"web-{uuid.uuid4().hex[:8]}"
    async with phone(server) as (page, errors):
        await page.get_by_label("API token").fill("olt_not-a-real-token")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_have_text("That token was not accepted.")
        await sign_in(page, api_token(server, uid))
        assert await fits_the_screen(page)

        # Live: the device streams the dialogue; its words appear as they are transcribed.
        device = asyncio.create_task(simulate(dialogue[0], server.ws, token=token(uid), speed=2, settle_s=1.5))
        transcript = page.get_by_role("list", name="Live transcript")
        await expect(transcript).to_contain_text("clinic", timeout=30_000)
        heard = await device
        await expect(transcript.locator("li")).to_have_count(len(heard.segments), timeout=10_000)
        await expect(transcript).to_contain_text("pharmacy")
        record_property("screenshot", str(await screenshot(page, "web.png", capsys)))

        # Search: once the turns are indexed, a word of the dialogue finds them.
        deadline = time.monotonic() + 60
        while not server.get("/v1/memory/search", uid=uid, params={"q": "pharmacy"}).json()["items"]:
            assert time.monotonic() < deadline, "the dialogue was not indexed"
            await asyncio.sleep(0.3)
        await page.get_by_role("tab", name="Search").click()
        await page.get_by_label("Search your memory").fill("pharmacy")
        await page.get_by_role("button", name="Search", exact=True).click()
        results = page.get_by_role("list", name="Search results")
        await expect(results).to_contain_text("pharmacy")
        await screenshot(page, "web-search.png", capsys)

        # The hit opens its conversation; a speaker renamed there is renamed everywhere.
        await results.get_by_role("link").first.click()
        await expect(page.locator("#detail-title")).to_be_focused()
        [conversation] = server.get("/v1/conversations/page", uid=uid).json()["items"]
        assert page.url.endswith(f"#conversation/{conversation['id']}")
        first = conversation["transcript_segments"][0]
        speakers = page.locator("#detail-speakers")
        for name in ("<img src=x onerror=alert(1)>", "Diane"):  # markup is shown as text, never run
            await speakers.get_by_role("button", name="Rename").first.click()
            await page.get_by_label("New name for").fill(name)
            await speakers.get_by_role("button", name="Save").click()
            await expect(speakers.locator(".speaker").first).to_have_text(name)
            assert await page.locator("main img").count() == 0
        await expect(page.locator("#detail-segments")).to_contain_text("Diane")
        stored = server.get(f"/v1/conversations/{conversation['id']}", uid=uid).json()["transcript_segments"]
        assert {s["speaker_name"] for s in stored if s["speaker_id"] == first["speaker_id"]} == {"Diane"}
        assert await fits_the_screen(page)
        await screenshot(page, "web-conversation.png", capsys)
        await page.get_by_role("tab", name="Live").click()
        await expect(transcript).to_contain_text("Diane")  # the live view of the same conversation too

        # Chat needs Letta, which this server does not deliver to: the page says why.
        await page.get_by_role("tab", name="Chat").click()
        await page.get_by_label("Message to your agent").fill("Who said pharmacy?")
        await page.get_by_role("button", name="Send").click()
        await expect(page.get_by_role("list", name="Chat messages")).to_contain_text("LETTA_DELIVERY")

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_label("API token")).to_be_visible()
        assert await page.evaluate("localStorage.length") == 0
        assert not errors, errors


async def test_chat_streams_the_agents_reply_with_its_memory_search(
    tmp_path: Path, letta: LocalLetta, capsys: pytest.CaptureFixture[str]
):
    from tests.integration.test_delivery import serve
    from tests.llm_standin import ScriptedLlm

    key = "sk-standin-0001"
    with ScriptedLlm(api_key=key) as llm:
        server = serve(tmp_path, letta, LLM_BASE_URL=llm.base_url, LLM_MODEL=llm.model, LLM_API_KEY=key)
        try:
            async with phone(server) as (page, errors):
                await sign_in(page, api_token(server, f"web-chat-{uuid.uuid4().hex[:8]}"))
                await page.get_by_role("tab", name="Chat").click()
                await page.get_by_label("Message to your agent").fill("Where is Diane from?")
                await page.get_by_label("Message to your agent").press("Enter")
                log = page.get_by_role("list", name="Chat messages")
                await expect(log.locator(".user")).to_have_text("Where is Diane from?")
                await expect(log.locator(".tool").first).to_have_text(
                    "searched memory: “Where is Diane from?”", timeout=90_000
                )
                await expect(log.locator(".agent")).to_contain_text("From your memory:", timeout=90_000)
                await expect(page.get_by_role("button", name="Send")).to_be_enabled()
                assert await fits_the_screen(page)
                await screenshot(page, "web-chat.png", capsys)
                assert not errors, errors
        finally:
            server.stop()
