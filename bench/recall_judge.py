"""Answer accuracy with an LLM judge (bench/recall.py): answer from the top hits, then judge against LoCoMo's answer.

As the mem0 and Zep papers do: the model answers each question from the retrieved turns alone,
then the same model says whether that answer matches the reference (CORRECT or WRONG).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from memory.search.vector_index import IndexHit

ANSWER = (
    "You answer questions about a person's past conversations using only the memories below. "
    "Each memory is a line said in a conversation, with its date. Answer in a few words; "
    "if the memories do not say, answer 'unknown'."
)
JUDGE = (
    "You grade an answer against a reference answer. Say CORRECT if the answer means the same as the "
    "reference (a date may be written differently, extra detail is fine), otherwise WRONG. Reply with one word."
)


class Asked(Protocol):
    question: str
    answer: str
    category: int


async def judge_answers(
    base_url: str, model: str, api_key: str, questions: Sequence[Asked], hits: Sequence[list[IndexHit]]
) -> dict[str, Any]:
    """Accuracy per category (and over 1-4) of answers from ``hits``, judged by the LLM at ``base_url``."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=120.0, max_retries=1)
    per: dict[str, list[float]] = defaultdict(list)
    try:
        for q, found in zip(questions, hits, strict=True):
            memories = "\n".join(
                f"[{datetime.fromtimestamp(h.start, tz=UTC):%d %B %Y}] {h.speaker}: {h.text}" for h in found
            )
            reply = await client.chat.completions.create(
                model=model,
                temperature=0,
                messages=[
                    {"role": "system", "content": ANSWER},
                    {"role": "user", "content": f"Memories:\n{memories}\n\nQuestion: {q.question}"},
                ],
            )
            answer = reply.choices[0].message.content or ""
            verdict = await client.chat.completions.create(
                model=model,
                temperature=0,
                messages=[
                    {"role": "system", "content": JUDGE},
                    {"role": "user", "content": f"Question: {q.question}\nReference: {q.answer}\nAnswer: {answer}"},
                ],
            )
            right = "CORRECT" in (verdict.choices[0].message.content or "").upper()
            for key in (str(q.category), *(["1-4"] if q.category != 5 else [])):
                per[key].append(1.0 if right else 0.0)
    finally:
        await client.close()
    return {key: round(sum(v) / len(v), 3) for key, v in sorted(per.items())}
