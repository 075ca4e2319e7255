"""One optimizer step spread over processes and micro-batches, as PyTorch users spread it.

The global batch (``--global-batch``, else ``--batch-size`` × ``--grad-accum``) decides a run:
its rows are a function of (seed, step) alone (``loop.batch_indices``). Each of the W
processes takes 1/W of them, in N micro-batches (``Layout``); every micro-batch's mean loss is
weighted by its share of the global batch, so the summed gradient is that of the global mean
for any W × N (up to float summation order).

Under torchrun the gradients are reduced by ``DistributedDataParallel`` (bucketed, overlapped
with the backward; ``no_sync`` on all micro-batches but the last), or with ``shard`` by FSDP2
(``fully_shard``: parameters, gradients and optimizer state split over the processes). DDP
wraps only what trains: a small module holding the part's trainable parameters, whose forward
is the part's own; a frozen base stays unwrapped. Checkpoint tensors are full, CPU,
FQN-keyed state dicts (``torch.distributed.checkpoint.state_dict``), gathered on rank 0 and
broadcast from it on load: any world size, sharded or not, reads any other's checkpoint.
Rank 0 alone reads the files (``results.from_main``) and tells the others what it found.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from autoprompt_py import distributed
from autoprompt_py.errors import AutopromptError

MODES = ("single", "ddp", "fsdp", "allreduce")  # allreduce: the hand-rolled reference (bench)
SHARDABLE = ("full", "lora")
T = TypeVar("T")


@dataclass(frozen=True)
class Layout:
    """``global_batch`` rows per optimizer step = ``world`` processes × ``accum`` micro-batches
    × ``micro`` rows."""

    global_batch: int
    world: int
    accum: int

    @property
    def micro(self) -> int:
        return self.global_batch // (self.world * self.accum)

    def micro_batches(self, rows: list[int], rank: int) -> list[list[int]]:
        """This rank's micro-batches of the step's rows (a contiguous 1/world of them)."""
        share = self.global_batch // self.world
        mine = rows[rank * share : (rank + 1) * share]
        return [mine[i * self.micro : (i + 1) * self.micro] for i in range(self.accum)]


def layout(config, world: int | None = None) -> Layout:
    """How ``config``'s global batch splits over ``world`` processes; a one-line error when it
    does not divide. Runs before any model loads (the CLI calls it with the launch's size)."""
    world = world or distributed.Launch.from_env().world_size
    accum = config.grad_accum
    total = config.step_batch
    name = "--global-batch" if config.global_batch else "--batch-size × --grad-accum"
    if total % world:
        raise AutopromptError(
            f"{name} {total}: does not split over {world} processes (torchrun "
            f"--nproc-per-node); use a multiple of {world}, e.g. {world * -(-total // world)}"
        )
    share = total // world
    if accum is None:
        # the fewest micro-batches of at most --batch-size rows (with --global-batch), else one
        limit = config.batch_size if config.global_batch else share
        accum = next(d for d in range(1, share + 1) if share % d == 0 and share // d <= limit)
    elif share % accum:
        raise AutopromptError(
            f"--grad-accum {accum}: {name} {total} over {world} processes is {share} rows per "
            f"process, which {accum} micro-batches do not split evenly; use a divisor of {share}"
        )
    return Layout(total, world, accum)


class Trainables(nn.Module):
    """A part's trainable parameters as one module whose forward is the part's logits: what
    DDP wraps (the frozen base is used, not held). Names: the part's attribute for a bare
    parameter (soft: ``vectors``), else its place in the part's module."""

    def __init__(self, part, params: dict[str, nn.Parameter]) -> None:
        super().__init__()
        object.__setattr__(self, "part", part)  # not a submodule: nothing of it is registered
        for name, p in params.items():
            self.register_parameter(name, p)

    def forward(self, batches):
        return self.part.logits(batches)


def trainable_names(part) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """The module the trainable parameters live in (a part's module, or a ``Trainables`` for
    bare parameters) and them by their names there: the keys of checkpoints."""
    wanted = {id(p): p for p in part.trainable()}
    for m in part.modules():
        named = {n: p for n, p in m.named_parameters() if id(p) in wanted}
        if len(named) == len(wanted):
            return m, named
    bare = {n: v for n, v in vars(part).items() if isinstance(v, nn.Parameter) and id(v) in wanted}
    if len(bare) != len(wanted):
        bare = {f"p{i}": p for i, p in enumerate(part.trainable())}
    holder = Trainables(part, bare)
    return holder, bare


def forward_model(part) -> nn.Module:
    """The transformers model a part's forward runs through (its layers: checkpointing, FSDP)."""
    lm = getattr(part, "lm", None)
    own = getattr(part, "model", None)  # head: its own classification model
    return own if isinstance(own, nn.Module) else lm.model


def _full(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


class Parallel:
    """How ``Trainer`` runs a step: the layout, the wrapping, the state in and out."""

    def __init__(self, part, config, device: torch.device, mode: str | None = None) -> None:
        self.part, self.config, self.device = part, config, device
        world = distributed.world_size()
        self.layout = layout(config, world)
        if mode is None:
            mode = "single" if world == 1 else ("fsdp" if config.shard else "ddp")
        if mode not in MODES or (mode != "single" and world == 1):
            raise ValueError(f"parallel mode {mode!r} with {world} process(es)")
        self.mode = mode
        lm = getattr(part, "lm", None)
        self.autocast = getattr(lm, "autocast_dtype", None)
        if self.autocast == torch.float16:
            raise AutopromptError(
                "--dtype float16: training under float16 autocast needs loss scaling, which "
                "tune does not do; use --dtype bfloat16 (or float32)"
            )
        self.checkpointed: list[nn.Module] = []
        if config.grad_checkpointing:
            self.checkpointed = enable_checkpointing(forward_model(part))
        self.module, _ = trainable_names(part)
        self.ddp = None
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            names = trainable_names(part)[1]  # a module's names have dots: not allowed here
            holder = Trainables(part, {k.replace(".", "/"): p for k, p in names.items()})
            # the holder has no buffers; inputs are on the device already (no device_ids)
            self.ddp = DistributedDataParallel(holder)
        elif mode == "fsdp":
            self.fsdp_roots = shard(part, device)

    # -- a step --------------------------------------------------------------------------------

    def logits(self, batches):
        """The training forward: through DDP where it reduces, under bf16 autocast on GPUs."""
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with autocast:
            return self.ddp(batches) if self.ddp is not None else self.part.logits(batches)

    @contextlib.contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        """Gradients are reduced after the last micro-batch only (``no_sync`` before it)."""
        if last or self.mode in ("single", "allreduce"):
            yield
        elif self.mode == "ddp":
            with self.ddp.no_sync():
                yield
        else:
            for root in self.fsdp_roots:
                root.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                for root in self.fsdp_roots:
                    root.set_requires_gradient_sync(True)

    def accumulate(self, rows: list[int], loss_of: Callable[[list[int]], torch.Tensor]) -> float:
        """Forward and backward over this rank's micro-batches of the step's ``rows``; returns
        the global batch's mean loss (the same on every rank)."""
        lay = self.layout
        for layer in self.checkpointed:  # transformers checkpoints in training mode only; not
            layer.training = True  # recursive: dropout stays as train_mode set it
        micro = lay.micro_batches(rows, distributed.rank())
        # DDP and FSDP average over the processes: scale each share up by the world size
        averaged = self.mode in ("ddp", "fsdp")
        total = torch.zeros((), dtype=torch.float64)
        for i, part_rows in enumerate(micro):
            weight = len(part_rows) / lay.global_batch
            with self.sync(i == len(micro) - 1):
                loss = loss_of(part_rows)
                (loss * (weight * lay.world if averaged else weight)).backward()
            total += float(loss.detach()) * weight
        if self.mode == "allreduce":  # the hand-rolled reduction DDP replaced: one by one
            for p in self.part.trainable():
                if p.grad is not None:
                    distributed.all_reduce_(p.grad)
        return float(distributed.all_reduce_(total))

    def clip(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.part.trainable(), max_norm)

    # -- state in and out ----------------------------------------------------------------------

    def state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors, full, on the CPU: on rank 0 (the others get {})."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        options = _full(cpu_offload=True, ignore_frozen_params=True)
        sd = get_model_state_dict(self.module, options=options)
        return {k: v.detach().clone() for k, v in sd.items()}  # a copy, never the live tensors

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``state`` (from ``state``; rank 0's is broadcast to the others)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        options = _full(strict=False, broadcast_from_rank0=distributed.active())
        set_model_state_dict(self.module, state, options=options)

    def optimizer_state(self, optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        options = _full(cpu_offload=True, ignore_frozen_params=True)
        return get_optimizer_state_dict(self.module, optimizer, options=options)

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        options = _full(broadcast_from_rank0=distributed.active())
        set_optimizer_state_dict(self.module, optimizer, state, options=options)

    @contextlib.contextmanager
    def whole(self) -> Iterator[None]:
        """While rank 0 writes the tuned folder: under FSDP, the part's modules hand
        ``save_pretrained`` full tensors (gathered on every rank's call, kept on rank 0)."""
        if self.mode != "fsdp":
            yield
            return
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        patched = []
        for m in self.part.modules():
            full = get_model_state_dict(m, options=_full(cpu_offload=True))
            first: dict[int, str] = {}  # tied weights share one tensor, as save_pretrained expects
            for name, p in m.named_parameters(remove_duplicate=False):
                if full and name in full:
                    full[name] = full[first.setdefault(id(p), name)]
            m.state_dict = lambda *a, _full=full, **k: dict(_full)  # save_pretrained reads it
            patched.append(m)
        try:
            yield
        finally:
            for m in patched:
                del m.state_dict


def enable_checkpointing(model: nn.Module) -> list[nn.Module]:
    """Activation checkpointing in the model's layers (recomputed in the backward); the
    layers it applies to."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise AutopromptError(
            f"--grad-checkpointing: {type(model).__name__} does not support activation "
            "checkpointing in transformers; leave the option out"
        )
    # non-reentrant: works with frozen inputs (soft prompts, LoRA) and keeps the RNG (dropout)
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


def shard(part, device: torch.device) -> list[nn.Module]:
    """FSDP2: each transformer block (the classes transformers keeps whole) and the model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = forward_model(part)
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for parent in list(model.modules()):
        if isinstance(parent, nn.ModuleList):
            for child in parent:
                if type(child).__name__ in blocks:
                    fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # fully_shard registers new (sharded) parameters: the part's list must name those, and
    # must not keep the old full ones alive
    live = [p for m in part.modules() for p in m.parameters() if p.requires_grad]
    live = list({id(p): p for p in live}.values())
    part.trainable = lambda: live
    return [model]


def is_sharded(part) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for root in part.modules() for m in root.modules())


def eval_share(orders: list[list[int]], part) -> list[tuple[list[int], bool]]:
    """This rank's evaluation batches, (rows, keep): every world-th; under FSDP every rank
    runs as many forwards (the weights are gathered by all together), padded with batches
    whose result is dropped."""
    world, rank = distributed.world_size(), distributed.rank()
    mine = [(rows, True) for rows in orders[rank::world]]
    if world > 1 and orders and is_sharded(part):
        mine += [(orders[0], False)] * (math.ceil(len(orders) / world) - len(mine))
    return mine


def inference(part):
    """``inference_mode``; under FSDP ``no_grad`` (buffers FSDP makes in a first forward under
    inference mode could not be updated by training afterwards)."""
    return torch.no_grad() if is_sharded(part) else torch.inference_mode()


# -- rank 0 decides -------------------------------------------------------------------------------


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (small, picklable), in rank order, on every rank."""
    if not distributed.active():
        return [value]
    out: list[Any] = [None] * distributed.world_size()
    _collective(torch.distributed.all_gather_object, out, value)
    return out


def _collective(op, *args, **kwargs) -> None:
    try:
        op(*args, **kwargs)
    except Exception as e:  # a peer died or failed: distributed.run reports it as such
        raise distributed.PeerLost(str(e).strip().splitlines()[0][:300]) from None
