"""Several models at once (``--model`` given more than once): what they must share, and how a
record names them.

One prompt is searched for, or scored on, several models only where a token id means the
same token to every one of them: their tokenizers must map every token to the same id (the
special tokens included), and the models must be of one kind (masked LMs, or decoders). The
first difference is named in one line. A model is loaded once: the same one given twice is
refused. ``ACROSS`` combines the models' dev metrics into the one a search keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprompt_py.errors import AutopromptError, shown

if TYPE_CHECKING:
    from autoprompt_py.language_model import LanguageModel

# how the models' dev metrics become the one a search keeps (``SearchConfig.across``)
ACROSS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda values: sum(values) / len(values),
    "min": min,
}
_SPECIALS = ("mask", "pad", "cls", "sep", "bos", "eos", "unk")


def check_distinct(names: Sequence[str], option: str = "--model") -> None:
    """Refuse a model named twice (also by two paths to one folder): each is loaded once."""
    seen: dict[str, str] = {}
    for name in names:
        path = Path(str(name)).expanduser()
        key = str(path.resolve()) if path.exists() else str(name)
        if key in seen:
            raise AutopromptError(
                f"{option} {name}: given twice (as {seen[key]} and {name}); give each model once"
            )
        seen[key] = str(name)


def check_shared_vocabulary(lms: Sequence[LanguageModel]) -> None:
    """Refuse models that do not share one vocabulary (token → id) or one kind, naming the
    first differing token and its ids."""
    first = lms[0]
    vocab = first.tokenizer.get_vocab()
    for lm in lms[1:]:
        where = f"--model {lm.name}: "
        if lm.kind != first.kind:
            raise AutopromptError(
                f"{where}a {lm.kind} model, but --model {first.name} is a {first.kind} one; "
                "models used together must be of one kind"
            )
        other = lm.tokenizer.get_vocab()
        if other != vocab:
            token = min(
                (t for t in {*vocab, *other} if vocab.get(t) != other.get(t)),
                key=lambda t: (min(i for i in (vocab.get(t), other.get(t)) if i is not None), t),
            )
            raise AutopromptError(
                f"{where}its vocabulary differs from --model {first.name}'s: token "
                f"{shown(token)} is {_id(other.get(token))} here and {_id(vocab.get(token))} "
                "there; models used together must share one tokenizer's vocabulary"
            )
        for special in _SPECIALS:
            mine, theirs = _special_id(lm, special), _special_id(first, special)
            if mine != theirs:
                raise AutopromptError(
                    f"{where}its {special} token is {_id(mine)}, --model {first.name}'s "
                    f"{_id(theirs)}; models used together must share one tokenizer's vocabulary"
                )


def _special_id(lm: LanguageModel, special: str) -> int | None:
    """The id of a named special token; the mask token as the model fills one (a decoder's
    tokenizer may name one it never fills, which no search or score reads)."""
    if special == "mask":
        return lm.mask_token_id
    return getattr(lm.tokenizer, f"{special}_token_id", None)


def _id(token_id: int | None) -> str:
    return "absent" if token_id is None else f"id {token_id}"


def shared_rows(lms: Sequence[LanguageModel]) -> int:
    """Embedding rows every model has (models pad their matrices differently; rows past the
    tokenizer's vocabulary are never trigger tokens)."""
    return min(lm.vocab_size for lm in lms)


def models_record(lms: Sequence[LanguageModel]) -> dict[str, Any]:
    """``models``: every model's identity, where a record holds several (else nothing)."""
    if len(lms) == 1:
        return {}
    from autoprompt_py.prompt import model_record

    return {"models": [model_record(lm) for lm in lms]}
