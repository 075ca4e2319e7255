"""A masked LM (any ``AutoModelForMaskedLM``) and a forward pass that scores only the mask
positions; ``load_model`` loads either kind (a decoder through ``causal_model.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedTokenizerBase

from autoprompt_py.causal_model import load_causal
from autoprompt_py.default_model import DEFAULT_MODEL, check_default_model, is_default_model
from autoprompt_py.errors import AutopromptError
from autoprompt_py.hub import check_hub_model
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.model_kind import MASKED, kind_of_config
from autoprompt_py.remote_code import (
    check_remote_code,
    local_load_failure,
    refusal,
    remember_trusted,
)
from autoprompt_py.textfile import damaged_file, regular_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_devices() -> list[str]:
    """The devices torch can use here: ``cpu``, ``cuda:N`` for each GPU, ``mps``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (a CUDA GPU if any, else the CPU) or a device that exists here; anything else
    is a user error naming the devices there are. Cheap: commands check it before any work."""
    from autoprompt_py.distributed import local_device

    device = local_device(device)  # under torchrun with CUDA: this process's cuda:LOCAL_RANK
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AutopromptError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    have = available_devices()
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda" and torch.cuda.is_available():
        if dev.index is None or dev.index < torch.cuda.device_count():
            return dev
    elif dev.type == "mps" and "mps" in have:
        return dev
    elif dev.type not in ("cuda", "mps"):
        raise AutopromptError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    raise AutopromptError(
        f"--device {device}: not available on this machine (devices here: {', '.join(have)}); "
        "use --device auto or one of those"
    )


@dataclass
class MaskedLM(LanguageModel):
    """A frozen masked LM with its tokenizer, on one device.

    ``mask_logits`` runs the encoder over the whole input but the MLM head only at the given
    positions: on small models the head over every position is most of the cost.
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    # float32 weights with the forward under autocast to this dtype (bf16 on GPUs), or None
    autocast_dtype: torch.dtype | None = None
    # loaded with --trust-remote-code: a reload of the same model (tune --method head) may too
    trust_remote_code: bool = False
    kind: ClassVar[str] = MASKED  # decoders: causal_model.CausalLM, the same interface
    reads_next_token: ClassVar[bool] = False  # the slot is a mask, read with text on both sides
    triggers_round_trip: ClassVar[bool] = False  # results are scored from the ids

    def __post_init__(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        self._gather_at: torch.Tensor | None = None
        # The head of every HF masked LM is applied position-wise to the encoder's first
        # output, so gathering the mask positions there is exact for all families.
        self.model.base_model.register_forward_hook(self._gather_hook)
        self.uses_token_type_ids = "token_type_ids" in self.tokenizer.model_input_names

    @property
    def trigger_fill_id(self) -> int:
        """What open trigger slots hold when a search starts (``--initial mask``)."""
        return self.tokenizer.mask_token_id

    @property
    def mask_token(self) -> str | None:
        return self.tokenizer.mask_token  # load_model refuses a tokenizer without one

    @property
    def mask_token_id(self) -> int | None:
        return self.tokenizer.mask_token_id

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.tokenizer.all_special_ids)

    @property
    def max_length(self) -> int:
        """The longest input, special tokens included, that both tokenizer and model accept."""
        limit = self.tokenizer.model_max_length
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions and getattr(self.model.config, "model_type", "") in (
            "roberta",
            "camembert",
            "xlm-roberta",
        ):
            positions -= 2  # RoBERTa's position ids start after the padding index
        if not limit or limit > 100_000:  # tokenizers without a limit say 1e30
            limit = positions or 512
        return min(limit, positions) if positions else limit

    def _gather_hook(self, module: nn.Module, args: object, output: object) -> object:
        if self._gather_at is None:
            return output
        hidden = output[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        gathered = hidden[rows, self._gather_at]
        if isinstance(output, tuple):
            return (gathered,) + tuple(output[1:])
        output.last_hidden_state = gathered
        return output

    def mask_logits(
        self,
        mask_positions: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MLM logits at ``mask_positions`` ([batch, k] indices): returns [batch, k, vocab]."""
        kwargs = {"attention_mask": attention_mask}
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        if token_type_ids is not None and self.uses_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        with self.head_at(mask_positions), self.autocast():
            out = self.model(**kwargs, return_dict=True)
        return out.logits

    def peft_task_type(self, peft: Any, method: str) -> Any:
        # a masked LM has no task type of its own: LoRA wraps the model as it is, and prompt
        # learning's feature-extraction forward returns the MLM's own output
        return None if method == "lora" else peft.TaskType.FEATURE_EXTRACTION

    def sequence_head_options(self) -> dict[str, Any]:
        return {}

    def head_input_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int | None
    ) -> torch.Tensor:
        return input_ids  # the head reads the first token

    def prefix_key_values(self, ids: list[int], layers: int) -> torch.Tensor:
        return _hooked_key_values(self, ids, layers)


def load_model(
    name: str | Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    autocast: bool | None = None,
    trust_remote_code: bool = False,
) -> LanguageModel:
    """Load a masked LM and its tokenizer from a local folder or a hub id; without a name (or
    with ``"bert-tiny-splade"``/``"default"``), the small model bundled in the package. A
    decoder (the kind read from the config: ``model_kind.py``) loads as a ``CausalLM``.

    A hub id that is neither cached nor reachable fails within seconds (``hub.py``).
    ``dtype`` bfloat16/float16 with ``autocast`` (default: on GPUs) keeps float32 weights and
    runs the forward under autocast (matrix products in half precision, normalizations in
    float32); without it the weights themselves are cast.

    A model that needs its own Python code (``auto_map``, a model type transformers lacks) is
    refused before anything of it is imported, unless ``trust_remote_code`` (``remote_code.py``).
    """
    if dtype not in DTYPES:
        raise AutopromptError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    dev = resolve_device(device)
    if autocast is None:
        autocast = dev.type == "cuda"
    autocast_dtype = DTYPES[dtype] if autocast and dtype != "float32" else None
    if autocast_dtype is not None:
        dtype = "float32"
    cache_only = False
    if is_default_model(name):
        # recorded by its alias, so result files name it the same on every installation
        source, name, local = str(check_default_model()), DEFAULT_MODEL, True
    else:
        source = name = str(name)
        local = Path(name).expanduser().exists()
        if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise AutopromptError(f"--model {name}: no such folder")
        if not local:
            cache_only = check_hub_model(name)
        else:
            _check_model_folder(Path(name).expanduser(), name)
        check_remote_code(name, trust_remote_code)
    # always explicit: left None, transformers may ask on the terminal whether to run the code
    kwargs = {"trust_remote_code": bool(trust_remote_code)}
    if cache_only:
        kwargs["local_files_only"] = True
    kind = _checkpoint_kind(source, name, local, kwargs)  # before any weight loads
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as e:  # transformers raises many types for a bad folder or offline hub
        raise AutopromptError(_load_failure(name, local, "tokenizer", e)) from None
    if kind != MASKED:  # a decoder: causal_model.py
        lm = load_causal(source, name, tokenizer, dev, DTYPES[dtype], autocast_dtype, **kwargs)
        if trust_remote_code:
            remember_trusted(name, source)
        return lm
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            source, dtype=DTYPES[dtype], output_loading_info=True, **kwargs
        )
    except Exception as e:
        raise AutopromptError(_load_failure(name, local, "masked language model", e)) from None
    if trust_remote_code:
        remember_trusted(name, source)
    if info.get("missing_keys"):
        # e.g. a bare encoder saved without its MLM head: the head would be random noise
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise AutopromptError(
            f"--model {name}: the weights lack parts of a masked LM ({missing}, ...); "
            "save the model with its MLM head (an ...ForMaskedLM class)"
        )
    if tokenizer.mask_token is None:
        raise AutopromptError(
            f"--model {name}: its tokenizer has no mask token; a masked LM is needed"
        )
    return MaskedLM(model.to(dev), tokenizer, name, autocast_dtype, bool(trust_remote_code))


def _checkpoint_kind(source: str, name: str, local: bool, kwargs: dict) -> str:
    from transformers import AutoConfig

    try:  # custom code is never run to learn the kind (nor asked about on a terminal)
        config = AutoConfig.from_pretrained(source, **{"trust_remote_code": False, **kwargs})
    except Exception as e:
        raise AutopromptError(_load_failure(name, local, "model config", e)) from None
    return kind_of_config(config, name)


def _check_model_folder(path: Path, name: str) -> None:
    """A local --model must be a folder that save_pretrained wrote: say so in one line rather
    than pass on the tokenizer's puzzle (``Couldn't instantiate the backend tokenizer``)."""
    if not path.is_dir():
        raise AutopromptError(
            f"--model {name}: a file, not a model folder; give the folder save_pretrained "
            "wrote (config.json, weights, tokenizer files) or a hub id"
        )
    if not (path / "config.json").exists():
        raise AutopromptError(
            f"--model {name}: this folder is not a model (no config.json); give a folder "
            "saved with save_pretrained (config.json, weights, tokenizer files) or a hub id"
        )
    for entry in sorted(path.iterdir()):
        # transformers opens what it finds: a FIFO there would block it forever
        if entry.exists() and not entry.is_dir():
            regular_file(entry, "model file", "--model")


def _load_failure(name: str, local: bool, what: str, e: Exception) -> str:
    if "trust_remote_code" in str(e):  # custom code found where the check could not look
        return refusal(name, f"its {what} is defined by code in the model's repository")
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    reason = reason.split(" for this kind of AutoModel")[0]  # the long list of types adds nothing
    if local:
        missing = local_load_failure(reason, name) or damaged_file(Path(name).expanduser())
        if missing is not None:
            return f"--model {name}: {missing}"
        return f"--model {name}: this folder does not hold a {what} ({reason[:200]})"
    return (
        f"--model {name}: could not load a {what} from the Hugging Face hub ({reason[:200]}); "
        "when offline, point --model at a local folder saved with save_pretrained"
    )


def config_value(config: object, *names: str) -> int | None:
    """The first of ``names`` that a model config sets to an int (families name the same
    size differently: ``num_hidden_layers``, ``n_layers``, ...)."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


# the key and value projections of an attention layer, by family: BERT, RoBERTa, ELECTRA,
# ALBERT ("key"/"value"), DeBERTa-v2 ("key_proj"), DistilBERT ("k_lin"), others ("k_proj")
KEY_VALUE_NAMES = (("key", "value"), ("key_proj", "value_proj"), ("k_lin", "v_lin"),
                   ("k_proj", "v_proj"))  # fmt: skip


def key_value_modules(model: torch.nn.Module) -> tuple[list, list]:
    """The key and value projections of every attention layer (by the names families use)."""
    for key_name, value_name in KEY_VALUE_NAMES:
        keys = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == key_name]
        values = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == value_name]
        if keys and len(keys) == len(values):
            return keys, values
    raise AutopromptError(
        f"--method prefix: no key/value projections found in {type(model).__name__}; use "
        "--init random (PEFT's own start)"
    )


def _hooked_key_values(lm: MaskedLM, ids: list[int], layers: int) -> torch.Tensor:
    """``MaskedLM.prefix_key_values``: the outputs of every layer's key and value
    projections, caught by hooks while the model reads ``ids`` alone."""
    keys, values = key_value_modules(lm.model)
    out: dict[str, list[torch.Tensor]] = {"k": [], "v": []}
    hooks = [m.register_forward_hook(lambda _m, _i, o, w=w: out[w].append(o.detach()))
             for ms, w in ((keys, "k"), (values, "v")) for m in ms]  # fmt: skip
    input_ids = torch.tensor([ids], device=lm.device)
    mask = torch.ones_like(input_ids)
    was_training = lm.model.training
    lm.model.eval()
    try:
        with torch.no_grad():
            lm.model(input_ids=input_ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
        lm.model.train(was_training)
    if len(out["k"]) != layers or len(out["v"]) != layers:  # ALBERT: one module, called per layer
        raise AutopromptError(
            f"--method prefix: found {len(out['k'])} key projections run for {layers} layers; "
            "use --init random (PEFT's own start)"
        )
    rows = [torch.cat([k[0], v[0]], dim=-1) for k, v in zip(out["k"], out["v"])]  # [n, 2H] each
    return torch.cat(rows, dim=-1).float().cpu()
