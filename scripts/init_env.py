"""Create `.env` from `.env.example` with a fresh random ADMIN_KEY (never overwrites `.env`)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Write `.env` and tell the user how to build their token."""
    target = ROOT / ".env"
    if target.exists():
        print(".env already exists; leaving it alone")
        return 0
    key = secrets.token_urlsafe(24)
    lines = [
        f"ADMIN_KEY={key}" if line.startswith("ADMIN_KEY=") else line
        for line in (ROOT / ".env.example").read_text().splitlines()
    ]
    target.write_text("\n".join(lines) + "\n")
    target.chmod(0o600)
    print(f"Wrote .env with a new ADMIN_KEY. Your bearer token is ADMIN_KEY followed by your uid: {key}<uid>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
