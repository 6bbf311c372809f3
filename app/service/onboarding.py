"""The OMI app's onboarding over ``/v4/listen?onboarding=enabled``: a few questions, answered aloud.

The app shows each ``onboarding_question`` and waits; once the wearer has said something (two
words or more in final segments) the answer is acknowledged with ``question_answered`` and the
next question follows, until ``onboarding_complete``. A ``{"type": "skip_question"}`` frame moves on
without an answer. Everything said is the wearer's (the session is opened with ``wearer_only``),
so the conversation it makes also teaches the service the wearer's voice when the stream closes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from core.segments import AbsoluteSegment
from memory.store.user_settings import UserSettingsStore

__all__ = ["MIN_ANSWER_WORDS", "QUESTIONS", "Onboarding"]

log = logging.getLogger(__name__)

QUESTIONS: tuple[str, ...] = (
    "What's your name, and what do you do?",
    "Who do you talk with most on a usual day?",
    "What would you like to remember better?",
)
MIN_ANSWER_WORDS = 2


class Onboarding:
    """One onboarding stream's questions (see the module docstring).

    Args:
        send: where the device's events go.
        settings: the user's app settings; ``onboarding_completed`` is set at the end.
        conversation_id: the in-progress conversation's id when asked (for ``onboarding_complete``).
    """

    def __init__(
        self,
        uid: str,
        send: Callable[[Any], Awaitable[None]],
        settings: UserSettingsStore,
        conversation_id: Callable[[], Awaitable[str | None]],
        questions: Sequence[str] = QUESTIONS,
    ) -> None:
        self.uid = uid
        self.send = send
        self.settings = settings
        self.conversation_id = conversation_id
        self.questions = tuple(questions)
        self.index = 0
        self.words = 0  # words heard since the current question was asked
        self.done = False

    async def start(self) -> None:
        """Ask the first question."""
        await self._ask()

    async def heard(self, segments: list[AbsoluteSegment]) -> None:
        """Final segments of the stream: an answer once they add up to :data:`MIN_ANSWER_WORDS`."""
        if self.done:
            return
        self.words += sum(len(s.text.split()) for s in segments)
        if self.words >= MIN_ANSWER_WORDS:
            await self._answered(True)

    async def skip(self) -> None:
        """``skip_question``: the current question goes unanswered."""
        if not self.done:
            await self._answered(False)

    async def _ask(self) -> None:
        self.words = 0
        await self.send(
            {
                "type": "onboarding_question",
                "question": self.questions[self.index],
                "question_index": self.index,
                "total_questions": len(self.questions),
            }
        )

    async def _answered(self, answered: bool) -> None:
        await self.send({"type": "question_answered", "question_index": self.index, "answered": answered})
        self.index += 1
        if self.index < len(self.questions):
            await self._ask()
            return
        self.done = True
        error: str | None = None
        try:
            await self.settings.update(self.uid, onboarding_completed=True)
        except Exception as exc:
            log.warning("could not record that onboarding completed (%s)", type(exc).__name__)
            error = "Could not save that onboarding completed"
        await self.send(
            {
                "type": "onboarding_complete",
                "conversation_id": await self.conversation_id(),
                "memories_created": 0,
                "error": error,
            }
        )
