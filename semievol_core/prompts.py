"""Prompt building: pure functions from data to chats (lists of role/content messages).

    chat = question_chat("Is the sky blue?", ["yes", "no"], demos=[Demo("Is grass red?", ["yes", "no"], "B")])
    target = training_target("A")                     # "Answer: A"
    chat = justification_chat(q, options, [Candidate("B", "…reasoning… Answer: B"), ...])

Every prompt asks the model to end with `Answer: X`, the line the answer parser looks for first and
the text the fine-tunes are trained to produce, so a trained model's replies parse exactly. The
backend renders chats through the model's own chat template; nothing here knows about tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .backends.base import Chat
from .schema import LETTERS


@dataclass(frozen=True)
class Demo:
    """A labeled example shown in-context (in-context propagation)."""

    question: str
    options: Sequence[str] | None
    answer: str


@dataclass(frozen=True)
class Candidate:
    """One collaborator's reply, shown to the justifier: its parsed answer and its raw text."""

    answer: str | None
    text: str


def format_question(question: str, options: Sequence[str] | None) -> str:
    """The question followed by lettered options, one per line ("A. negative")."""
    question = question.strip()
    if not options:
        return question
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options are supported, got {len(options)}")
    lines = [f"{LETTERS[i]}. {str(opt).strip()}" for i, opt in enumerate(options)]
    return question + "\n" + "\n".join(lines)


def answer_instruction(options: Sequence[str] | None) -> str:
    if options:
        letters = f"{LETTERS[0]}-{LETTERS[len(options) - 1]}"
        return f"End your reply with a line 'Answer: X' where X is one letter ({letters})."
    return "End your reply with a line 'Answer: ' followed by the short final answer."


def training_target(answer: str) -> str:
    """What fine-tuning teaches the model to write (loss is computed on these tokens only)."""
    return f"Answer: {answer.strip()}"


def demonstrations_block(demos: Sequence[Demo]) -> str:
    parts = [f"Example {i + 1}:\n{format_question(d.question, d.options)}\n{training_target(d.answer)}"
             for i, d in enumerate(demos)]
    return "\n\n".join(parts)


def question_chat(question: str, options: Sequence[str] | None, demos: Sequence[Demo] = (),
                  system: str | None = None) -> Chat:
    """The chat a collaborator (or the evaluated model) answers, with 0..k demonstrations."""
    body = format_question(question, options) + "\n\n" + answer_instruction(options)
    if demos:
        body = ("Here are solved examples of similar questions.\n\n" + demonstrations_block(demos)
                + "\n\nNow answer this question.\n" + body)
    chat: Chat = [{"role": "system", "content": system}] if system else []
    chat.append({"role": "user", "content": body})
    return chat


def training_chat(question: str, options: Sequence[str] | None, answer: str,
                  system: str | None = None) -> Chat:
    """Prompt + target, the unit of supervised fine-tuning (no demonstrations: in-weight)."""
    return question_chat(question, options, system=system) + [
        {"role": "assistant", "content": training_target(answer)}
    ]


def justification_chat(question: str, options: Sequence[str] | None,
                       candidates: Sequence[Candidate], max_chars: int = 600,
                       system: str | None = None) -> Chat:
    """Self-justification: the model reads every candidate answer with its reasoning and decides.

    `max_chars` cuts each candidate's text (from the front, keeping its conclusion) so that n long
    replies cannot push the question out of the context window.
    """
    shown = []
    for i, c in enumerate(candidates):
        text = c.text.strip()
        if len(text) > max_chars:
            text = "…" + text[-max_chars:]
        label = c.answer if c.answer is not None else "unclear"
        shown.append(f"Response {i + 1} (answer {label}):\n{text}")
    body = (format_question(question, options)
            + "\n\nSeveral responses to this question disagree:\n\n" + "\n\n".join(shown)
            + "\n\nWeigh their reasoning and decide which answer is correct. "
            + answer_instruction(options))
    chat: Chat = [{"role": "system", "content": system}] if system else []
    chat.append({"role": "user", "content": body})
    return chat
