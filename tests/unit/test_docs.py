"""The README stays short, and everything moved out of it stays reachable: each link leads to a file and a heading."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Sections the README once held, each now in the README or a document it links to.
MOVED = (
    "Who said what",
    "The web page",
    "Local Letta server",
    "Into the agent's memory",
    "When something fails",
    "Forgetting: retention and erasing your data",
    "Audit log",
    "Encryption at rest",
    "Backups",
    "What goes where: privacy modes and cloud backends",
    "Deepgram instead of the local speech-to-text",
    "From the OMI app's webhooks",
    "For agents: MCP",
    "Chat with your agent",
    "HTTP API",
    "Limits and browser headers",
    "Configuration",
    "Several workers: Redis and PostgreSQL",
)


def headings(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # not the comments of shell examples
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_readme_is_read_in_five_minutes() -> None:
    assert len(README.read_text().splitlines()) <= 250


def test_every_document_is_linked_from_the_readme_and_every_moved_section_is_in_one() -> None:
    linked = {(README.parent / link.split("#")[0]).resolve() for link in LINK.findall(README.read_text())}
    assert {d.resolve() for d in DOCS} <= linked, "a document the README does not link to"
    found = set(headings(README)) | {h for d in DOCS for h in headings(d)}
    assert [s for s in MOVED if s not in found] == []


def test_every_relative_link_leads_to_a_file_and_a_heading_there() -> None:
    broken = []
    for page in [README, *DOCS]:
        for link in LINK.findall(page.read_text()):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in {slug(h) for h in headings(path)}:
                broken.append(f"{page.name}: {link} (no such heading)")
    assert broken == []
