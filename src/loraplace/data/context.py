"""A task's context: a prompt that is plain text rather than a conversation.

An :class:`~loraplace.data.formats.Example`'s prompt is a list of chat messages, which a
tokenizer with a chat template renders through it. The built-in tasks (``piqa``, ``boolq``,
``asdiv``, ``tweet-sentiment``) and the ``choice`` format instead score an answer after a
plain-text context (``Question: ...\\nAnswer:``), the way lm-evaluation-harness scores a
multiple-choice task: no chat template, only the tokenizer's default leading tokens (its BOS,
if it adds one) before the text. Such a prompt is one message of role :data:`CONTEXT_ROLE`;
tokenization (:mod:`loraplace.data.batching`) writes its text as is, so training, the scorer
and lm-evaluation-harness all see the same tokens.
"""

from __future__ import annotations

__all__ = ["CONTEXT_ROLE", "context_prompt", "plain_context"]

CONTEXT_ROLE = "context"
"""The role of the single message of a plain-text prompt."""


def context_prompt(text: str) -> list[dict]:
    """The prompt of a plain-text context."""
    return [{"role": CONTEXT_ROLE, "content": text}]


def plain_context(prompt: list[dict]) -> str | None:
    """The text of a plain-text prompt, or ``None`` for a conversation (or an empty prompt)."""
    if len(prompt) == 1 and prompt[0].get("role") == CONTEXT_ROLE:
        return prompt[0]["content"]
    return None
