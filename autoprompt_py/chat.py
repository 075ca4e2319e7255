"""Chat templates for decoders (``--chat``): a template read as one exchange of a chat.

The template's text before the answer slot is the user's message (``--system`` gives the
system message), rendered with the tokenizer's own chat template and its generation prompt;
the answer slot opens the assistant's turn and the text after it continues that turn.

As nanoGCG does, the chat template is rendered once with a placeholder as the user's message
and split there: the text before it (the *header*: bos, the system turn, the user's header)
and after it (the *footer*: the end of the user's turn and the assistant's header, i.e. the
generation prompt). The encoder (``encoding.py``) writes the header's ids, the template's user
part (its fields and trigger slots, each tokenized as for plain text), the footer's ids, then
the slot. A chat template that writes the bos token itself, which the tokenizer adds again,
keeps one; a header that ends in a space gives the space to the message's first word.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from autoprompt_py.errors import AutopromptError
from autoprompt_py.template import Chat

# the user's message while the chat template is rendered: no template writes this itself
PLACEHOLDER = "AUTOPROMPT_USER_MESSAGE_7f3a9c"


def render(tokenizer: PreTrainedTokenizerBase, chat: Chat, user: str) -> str:
    """The chat template's text for ``user``'s message, with the generation prompt."""
    name = tokenizer.name_or_path or "this model"
    if not getattr(tokenizer, "chat_template", None):
        raise AutopromptError(
            f"--chat: the tokenizer of --model {name} has no chat template "
            "(tokenizer.chat_template is None); use a chat (instruct) model, or drop --chat"
        )
    messages = [{"role": "user", "content": user}]
    if chat.system is not None:
        messages.insert(0, {"role": "system", "content": chat.system})
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja2's TemplateError, or a template's raise_exception
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fix = "drop --system" if chat.system is not None else "check the model's chat template"
        raise AutopromptError(
            f"--chat: the chat template of --model {name} failed ({reason[:200]}); {fix}"
        ) from None
    return text if isinstance(text, str) else text[0]


@dataclass(frozen=True)
class ChatFrame:
    """The ids around the user's message: ``header`` before it (the tokenizer's own prefix,
    e.g. bos, once), ``footer`` after it (up to the assistant's first token); ``user_space``:
    the header ended in a space, which the message's first word takes."""

    header: tuple[int, ...]
    footer: tuple[int, ...]
    user_space: bool


@functools.lru_cache(maxsize=32)
def chat_frame(
    tokenizer: PreTrainedTokenizerBase, chat: Chat, prefix: tuple[int, ...], next_token: bool
) -> ChatFrame:
    """The frame of ``chat`` for this tokenizer; ``prefix``: the ids the tokenizer puts before
    any text (``encoding._SpecialLayout``); ``next_token``: the model is a decoder."""
    if not next_token:
        raise AutopromptError(
            f"--chat: --model {tokenizer.name_or_path or 'this model'} is a masked LM, and chat "
            "templates are a decoder's; drop --chat, or give a chat decoder as --model"
        )
    text = render(tokenizer, chat, PLACEHOLDER)
    if text.count(PLACEHOLDER) != 1:
        raise AutopromptError(
            f"--chat: the chat template of --model {tokenizer.name_or_path} does not write the "
            "user's message once as given, so the template cannot be placed in it; drop --chat"
        )
    before, after = text.split(PLACEHOLDER)
    stripped = before.rstrip(" ")
    ids = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
    return ChatFrame(
        tuple(keep_one_prefix(list(prefix), ids(stripped))), tuple(ids(after)), stripped != before
    )


def keep_one_prefix(prefix: Sequence[int], ids: Sequence[int]) -> list[int]:
    """``prefix`` + ``ids``, the prefix written once where ``ids`` already start with it (a
    chat template that writes ``{{ bos_token }}``, which the tokenizer adds too)."""
    n = len(prefix)
    if n and list(ids[:n]) == list(prefix):
        return list(ids)
    return [*prefix, *ids]


def tokenize_rendered(
    tokenizer: PreTrainedTokenizerBase, text: str, prefix: Sequence[int]
) -> list[int]:
    """The tokenizer's ids of a text, its prefix (bos) once where the text wrote it too."""
    ids = tokenizer(text)["input_ids"]
    n = len(prefix)
    return ids[n:] if n and ids[: 2 * n] == [*prefix, *prefix] else ids
