"""``autoprompt export``: a found or hand-written prompt as a soft-prompt seed."""

from __future__ import annotations

import click

from autoprompt_py.cli.models import one_model
from autoprompt_py.cli.options import force_option, trust_option
from autoprompt_py.cli.outputs import lock_output
from autoprompt_py.cli.paths import InputFile
from autoprompt_py.default_model import DEFAULT_MODEL
from autoprompt_py.errors import AutopromptError

# export.py and prompt.py import torch: they are imported inside the command, so that --help
# and a mistyped option answer at once; tests/test_newcomer.py checks these copies
FORMATS = ("peft", "optiprompt", "embeddings")  # export.FORMATS
TOKEN_CHOICES = ("auto", "triggers", "all")  # prompt.TOKEN_CHOICES


@click.command("export")
@click.argument("result", required=False, type=InputFile("search result file", as_path=True))
@click.option(
    "--template",
    "template_spec",
    help="A hand-written prompt instead of a result file: template text "
    "('{sentence} It was [MASK] .') or a one-template file.",
)
@click.option(
    "--model",
    "model_name",
    multiple=True,
    callback=lambda ctx, param, value: one_model(ctx, param, value) if value else None,
    help="Hub id or local folder of the model (masked LM or decoder) whose embeddings seed "
    f"the export [default: the model the search result names; with --template, "
    f"{DEFAULT_MODEL}].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    required=True,
    help="peft: a prompt-tuning adapter folder; optiprompt: template and vectors "
    "folder; embeddings: one .safetensors file.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(),  # a str: Path("") would be "." and hide an empty --out
    help="The folder (peft, optiprompt) or .safetensors file (embeddings) to write.",
)
@click.option(
    "--tokens",
    type=click.Choice(TOKEN_CHOICES),
    default="auto",
    show_default=True,
    help="Which tokens seed the vectors: triggers; all (every literal and trigger "
    "token in order, no fields or mask); auto (triggers if any, else all).",
)
@force_option("Replace --out if it exists.")
@trust_option
def export_command(result, template_spec, model_name, fmt, out, tokens, force) -> None:
    """Export a search RESULT (or --template) as a soft-prompt initialization."""
    from autoprompt_py.cli.models import model_from_option, quiet_transformers
    from autoprompt_py.export import check_target, export_prompt, require_peft
    from autoprompt_py.prompt import FoundPrompt, read_result

    if (result is None) == (template_spec is None):
        raise AutopromptError(
            "give a search result file (autoprompt export RESULT.json ...) or a hand-written "
            "prompt with --template, not both"
            if result is not None
            else "nothing to export: give a search result file (autoprompt export RESULT.json ...) "
            "or a hand-written prompt with --template '{sentence} It was [MASK] .'"
        )
    check_target(out, force, fmt)
    lock_output(out)  # a second export to the same --out is refused while this one runs
    if fmt == "peft":
        require_peft()
    data = read_result(result) if result is not None else None
    template = None if data is not None else _one_template(template_spec)
    if model_name is None:
        if data is None:
            model_name = DEFAULT_MODEL
        else:
            model_name = (data.get("model") or {}).get("name")
            if not model_name:
                raise AutopromptError(f"{result}: the result names no model; pass --model")
    quiet_transformers()
    lm = model_from_option(model_name, device="cpu")
    if data is not None:
        prompt = FoundPrompt.from_result(data, lm.tokenizer, tokens, source=str(result))
    else:
        prompt = FoundPrompt.from_template(template, lm.tokenizer, tokens)
    prompt.check_model(lm)
    path = export_prompt(prompt, lm, fmt, out, force)
    click.echo(export_message(fmt, prompt.selection, prompt.tokens, prompt.text, model_name, path))


def export_message(
    fmt: str, selection: str, tokens: list[str], text: str, model_name: str, path: object
) -> str:
    """``wrote peft seed of 3 trigger tokens 'royalty tear coe' from M to P``; the readable
    text is added only where it differs from the tokens (``##ing`` pieces, ``Ġ`` marks)."""
    kind = "trigger" if selection == "triggers" else "prompt"
    shown = " ".join(tokens)
    plural = "s" if len(tokens) != 1 else ""
    read_as = f" (read as {text!r})" if text != shown else ""
    return (
        f"wrote {fmt} seed of {len(tokens)} {kind} token{plural} {shown!r}{read_as} "
        f"from {model_name} to {path}"
    )


def _one_template(spec: str):
    from autoprompt_py.resources import load_templates

    named = load_templates(spec)
    if len(named) != 1:
        names = ", ".join(t.name for t in named[:6]) + (", ..." if len(named) > 6 else "")
        raise AutopromptError(
            f"--template {spec}: {len(named)} templates ({names}); export "
            "one at a time: pass its text"
        )
    return named[0].template


COMMANDS = [export_command]
