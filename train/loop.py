"""The one training loop (Accelerate), shared by Stage 1, Stage 2 and the DPT heads.

A trainer plugs in a `TrainTask` (model, loss, validation, model config) and two loader factories; the loop owns
everything else: devices and processes, mixed precision, gradient accumulation and clipping, the optimizer and lr
schedule, EMA, TensorBoard and console progress, validation, checkpoints and exact resume.

Exact resume: a checkpoint stores weights, optimizer, scheduler, grad scaler, every RNG state of every rank (python,
numpy, torch, CUDA and the per-step generator handed to the task) and the data position (global samples consumed).
The data order is a pure function of (seed, position) (train/data.py), loaders never draw from the global RNG, and
validation runs inside a saved/restored RNG state, so on CPU a run resumed at step N logs exactly the losses of the
uninterrupted run.

One writer per run folder: the main process holds `<out>/run.lock` (pipeline/lock.py) for the whole run; a second
trainer on the same folder is refused with the holder's host and pid, a lock left by a dead process is taken over.

Graceful stop: SIGTERM (what a cluster scheduler sends before preemption) and SIGINT (Ctrl-C) only set a flag; the
loop finishes the current optimizer step, writes a checkpoint, prints how to resume (`--resume latest`) and raises
`TrainingInterrupted`, whose `exit_code` is the shell's 128 + signal (143 for SIGTERM, 130 for SIGINT). A second
signal stops at once. The handlers are installed for the duration of `run_training` and restored afterwards.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from torch import nn

from configs.schema import ConfigError, OptimConfig, TrainConfig
from pipeline.console import console, progress, summary, warn_loud
from pipeline.fingerprint import differences
from pipeline.lock import LockError, WriterLock
from train import checkpoint as ckpt
from train import fsdp
from train.data import LoaderRequest
from train.ema import EMA
from train.optim import build_optimizer, build_schedule, scaled_lr


class TrainTask(Protocol):
    """What a trainer plugs into `run_training`."""

    def build_model(self) -> nn.Module: ...

    def training_loss(
        self, model: nn.Module, batch: Any, step: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one (micro-)batch and extra values to log. Call `model(...)` (its forward), not another
        method, so that multi-process gradient synchronisation sees the computation."""
        ...

    def validate(self, model: nn.Module, loader: Iterable[Any]) -> dict[str, float]:
        """Metrics over `loader` (already on the device; the model is in eval mode under no_grad). May return {}."""
        ...

    def model_config(self) -> dict[str, Any]:
        """JSON-serialisable config that rebuilds the model; stored with every checkpoint."""
        ...

    # Optional attribute `selection = (metric, "min" | "max", "best" | "latest", why)`: the validation metric that
    # ranks the saved checkpoints (checkpoints/selection.json) and which one consumers get by default.


LoaderFactory = Callable[[LoaderRequest], Iterable[Any]]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint is kept and named in the message."""


RUN_LOCK = "run.lock"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunLockedError(LockError):
    """Another live trainer writes to this run folder."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped training at a step boundary after writing a checkpoint; exit with `exit_code`."""

    def __init__(self, signum: int, step: int, checkpoint: str, out_dir: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}. "
            f"Continue with the same command and --out {out_dir} --resume latest (exit status {self.exit_code})."
        )


class _StopFlag:
    """Signal handlers that only record the signal; the loop acts on it at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop now, the way the default handler would
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        console.print(f"[bold yellow]{signal.Signals(signum).name}[/bold yellow]: finishing this step, then writing a "
                      "checkpoint (send it again to stop at once)")

    def install(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():  # signal.signal only works there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@dataclass
class TrainResult:
    step: int  # final optimizer step
    loss: float  # loss of the last step (nan when no step ran in this call)
    checkpoint: str  # newest checkpoint folder
    samples_per_s: float  # training throughput of this call (all processes together)
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss, every step run in this call
    val: dict[str, float] = field(default_factory=dict)  # last validation metrics


def is_main_process() -> bool:
    """Rank 0 (or a single process), from the launcher's environment; usable before Accelerate starts."""
    return int(os.environ.get("RANK", "0")) == 0


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot run here (None when it can): inductor's CPU kernels are C++ built at run time."""
    import shutil

    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) and none is on PATH"
    return None


def resolve_mixed_precision(value: str) -> str:
    """`auto` = bf16 on CUDA, fp32 ("no") on CPU; `no`, `bf16`, `fp16` are taken as they are."""
    if value == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    if value not in ("no", "bf16", "fp16"):
        raise ConfigError(f"train.mixed_precision={value!r}: choose auto, no, bf16 or fp16")
    return value


# ------------------------------------------------------------------------------------------------ RNG


def _rank_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "step_generator": generator.get_state(),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        generator.set_state(state["step_generator"])


@contextmanager
def _preserved_rng(generator: torch.Generator) -> Iterator[None]:
    """Whatever runs inside (validation) leaves every RNG as it found it."""
    saved = _rng_state(generator)
    try:
        yield
    finally:
        _set_rng_state(saved, generator)


# --------------------------------------------------------------------------------------------- helpers


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _gather_objects(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------ loop


def run_training(
    task: TrainTask,
    train_loader_factory: LoaderFactory,
    val_loader_factory: LoaderFactory | None,
    cfg_train: TrainConfig,
    cfg_optim: OptimConfig,
    out_dir: str,
    *,
    resume: bool | str = False,
    cache_fingerprint: str = "",
    extra_meta: dict[str, Any] | None = None,
    full_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `task` for `cfg_train.steps` optimizer steps (in total, counting a resumed checkpoint's steps)."""
    extra_meta = dict(extra_meta or {})
    full_config = dict(full_config or {})
    if cfg_train.grad_accum < 1 or cfg_train.batch_size < 1 or cfg_train.steps < 1:
        raise ConfigError(
            f"train.steps={cfg_train.steps}, train.batch_size={cfg_train.batch_size}, train.grad_accum={cfg_train.grad_accum} must all be >= 1"
        )
    # cpu=True without CUDA: Accelerate then forms a gloo process group from torchrun/`accelerate launch` variables.
    if cfg_train.keep_last < 0 or cfg_train.keep_every < 0:
        raise ConfigError(f"train.keep_last={cfg_train.keep_last} and train.keep_every={cfg_train.keep_every} must be >= 0")
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg_train.mixed_precision), cpu=not torch.cuda.is_available())
    # Only the main process holds the lock: the other ranks of the same launch are the same writer.
    lock = (WriterLock(str(Path(out_dir) / RUN_LOCK), f"train {type(task).__name__}", what="training run", error=RunLockedError)
            if accelerator.is_main_process else nullcontext())
    stop = _StopFlag()
    try:
        with lock:
            stop.install()
            return _Run(task, train_loader_factory, val_loader_factory, cfg_train, cfg_optim, Path(out_dir), accelerator,
                        cache_fingerprint, extra_meta, full_config, stop).train(resume)
    finally:
        stop.restore()
        # Lets a later run in the same process choose another precision; keeps the process group.
        AcceleratorState._reset_state(reset_partial_state=False)


class _Run:
    def __init__(self, task, train_factory, val_factory, cfg_train, cfg_optim, out_dir, accelerator, cache_fingerprint, extra_meta, full_config,
                 stop: _StopFlag | None = None):
        self.task, self.train_factory, self.val_factory = task, train_factory, val_factory
        self.cfg, self.cfg_optim, self.out_dir, self.accelerator = cfg_train, cfg_optim, out_dir, accelerator
        self.cache_fingerprint, self.extra_meta, self.full_config = cache_fingerprint, extra_meta, full_config
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.global_batch = cfg_train.batch_size * self.world  # samples per micro-step, all processes
        self.effective_batch = self.global_batch * cfg_train.grad_accum  # samples per optimizer step
        self.main = accelerator.is_main_process
        self.fsdp = accelerator.distributed_type == DistributedType.FSDP  # train/fsdp.py
        self.last_checkpoint = ""
        self.sampler_position: Callable[[int], dict[str, int]] | None = None
        self.stop = stop or _StopFlag()

    # ---------------------------------------------------------------------------------------- set-up

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        if cfg.activation_checkpointing:
            if hasattr(model, "activation_checkpointing"):
                model.activation_checkpointing = True
            else:
                warn_loud(f"train.activation_checkpointing is on but {type(model).__name__} has no such switch; ignored")
        if cfg.compile:
            problem = compile_problem(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
            if not hasattr(model, "compile_blocks"):
                warn_loud(f"train.compile is on but {type(model).__name__} has no transformer blocks to compile; ignored")
            elif problem:
                warn_loud(f"train.compile is on but {problem}; training uncompiled")
            else:
                model.compile_blocks()
        optimizer = build_optimizer(model, self.cfg_optim, self.effective_batch)
        # The optimizer's parameter names in its order: FSDP's optimizer state is keyed by them (train/fsdp.py).
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.scheduler = build_schedule(optimizer, self.cfg_optim, cfg.steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.raw = self.accelerator.unwrap_model(self.model)
        if cfg.ema_decay <= 0:
            self.ema = None
        elif self.fsdp:
            self.ema = fsdp.ShardedEMA(self.model, cfg.ema_decay)  # shards beside the parameter shards
        else:
            self.ema = EMA(self.raw, cfg.ema_decay)
        self.model_config = _jsonable(self.task.model_config())
        # From here on each rank has its own random stream (dropout, noise), reproducible from (seed, rank).
        rank_seed = _rank_seed(cfg.seed, self.rank)
        torch.manual_seed(rank_seed)
        random.seed(rank_seed)
        np.random.seed(rank_seed % 2**32)
        self.generator = torch.Generator(self.accelerator.device).manual_seed(rank_seed)

    def _restore(self, path: Path) -> tuple[int, dict[str, Any] | None]:
        saved = ckpt.read_config(path)
        problems = differences(saved.get("model"), self.model_config, "model", holder="checkpoint")
        if self.cache_fingerprint and saved.get("cache_fingerprint") and saved["cache_fingerprint"] != self.cache_fingerprint:
            problems.append(f"cache_fingerprint: checkpoint has {saved['cache_fingerprint']!r}, this run's cache has {self.cache_fingerprint!r}")
        if saved.get("effective_batch") != self.effective_batch:
            problems.append(
                f"effective_batch: checkpoint has {saved.get('effective_batch')}, this run has {self.effective_batch} "
                "(batch_size x processes x grad_accum must stay the same to continue the data order)"
            )
        if problems:
            raise ckpt.CheckpointError(f"cannot resume from {path}: it does not match this run:\n  - " + "\n  - ".join(problems))
        weights, _ = ckpt.read_weights(path, prefer_ema=False)
        state = ckpt.read_train_state(path)
        if self.ema is not None:
            ema_weights, which = ckpt.read_weights(path, prefer_ema=True)
            if which != "ema":
                raise ckpt.CheckpointError(f"{path} has no {ckpt.EMA_FILE} but train.ema_decay={self.cfg.ema_decay}; resume with ema_decay=0")
            # Checkpoints from before the EMA warm-up have no count: they continue as if fully warmed up.
            updates = (state.get("ema") or {}).get("updates", int(state["step"]))
            if self.fsdp:
                self.ema.load_full_state_dict(ema_weights, updates)
            else:
                self.ema.load_state_dict({k: v.to(self.accelerator.device) for k, v in ema_weights.items()}, updates)
        if self.fsdp:  # every rank loads the single-process checkpoint and keeps its shards
            fsdp.load_full_state_dict(self.model, weights)
            fsdp.load_full_optimizer_state(self.model, self.optimizer.optimizer, state["optimizer"], self.param_names)
        else:
            self.raw.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) != self.world:
            warn_loud(f"{path} was written by {len(rngs)} processes, this run has {self.world}: random streams restart per rank")
        rng = rngs[self.rank] if self.rank < len(rngs) else None
        if self.main:
            console.print(f"resuming from {path} (step {state['step']})")
        self.last_checkpoint = str(path)
        return int(state["step"]), rng

    def _loader(self, start_step: int) -> Iterator[Any]:
        request = LoaderRequest(self.rank, self.world, self.cfg.batch_size, start_step * self.effective_batch, self.cfg.seed)
        loader = self.train_factory(request)
        sampler = getattr(loader, "sampler", None)
        self.sampler_position = getattr(sampler, "position", None)
        return iter(loader)

    # --------------------------------------------------------------------------------------- the loop

    def train(self, resume: bool | str) -> TrainResult:
        cfg = self.cfg
        self._build()
        start_step, rng = 0, None
        resume_path = ckpt.resolve_resume(self.out_dir, resume)
        if resume is True and resume_path is None and self.main:
            console.print(f"no checkpoint in {self.out_dir / ckpt.CHECKPOINTS} yet: starting from step 0")
        if resume_path is not None:
            start_step, rng = self._restore(resume_path)
        if self.extra_meta.get("random_weights") and self.main:
            warn_loud("this run trains on features/latents made with RANDOM weights; recorded in every checkpoint")
        if start_step >= cfg.steps:
            console.print(f"{resume_path} is already at step {start_step} >= train.steps={cfg.steps}: nothing to train")
            return TrainResult(start_step, math.nan, self.last_checkpoint, 0.0)

        data = self._loader(start_step)
        if rng is not None:  # after the loader exists, so its creation cannot shift the restored streams
            _set_rng_state(rng, self.generator)
        writer = self._tensorboard()
        losses: dict[int, float] = {}
        val: dict[str, float] = {}
        val_step = -1
        train_time, window_time, window_steps = 0.0, 0.0, 0
        lr = self.scheduler.get_last_lr()[0]
        bar = progress() if self.main else None
        try:
            with bar or nullcontext():
                job = bar.add_task("train", total=cfg.steps, completed=start_step, status="") if bar else None
                self.model.train()
                for step in range(start_step, cfg.steps):
                    tic = time.perf_counter()
                    loss, logs = self._optimizer_step(data, step)
                    lr = self.scheduler.get_last_lr()[0]
                    if not self.accelerator.optimizer_step_was_skipped:  # fp16: the grad scaler skipped an overflowing step
                        self.scheduler.step()
                    if self.ema is not None:
                        self.ema.update(self.raw)
                    elapsed = time.perf_counter() - tic
                    train_time += elapsed
                    window_time += elapsed
                    window_steps += 1
                    done = step + 1
                    losses[done] = loss
                    sps = window_steps * self.effective_batch / max(window_time, 1e-9)
                    if bar:
                        bar.update(job, completed=done, status=f"loss {loss:.4g}  lr {lr:.2e}  {sps:.1f} samples/s")
                    if writer and (done % max(cfg.log_every, 1) == 0 or done == cfg.steps):
                        writer.add_scalar("train/loss", loss, done)
                        writer.add_scalar("train/lr", lr, done)
                        writer.add_scalar("train/samples_per_s", sps, done)
                        for key, value in logs.items():
                            writer.add_scalar(f"train/{key}", value, done)
                        window_time, window_steps = 0.0, 0
                    if self.val_factory is not None and cfg.val_every > 0 and (done % cfg.val_every == 0 or done == cfg.steps):
                        val = self._validate()
                        val_step = done
                        if writer:
                            for key, value in val.items():
                                writer.add_scalar(f"val/{key}", value, done)
                        if self.main:
                            console.print(f"step {done} validation: " + ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
                    saved = (cfg.ckpt_every > 0 and done % cfg.ckpt_every == 0) or done == cfg.steps
                    if saved:
                        self._save(done, val if val_step == done else None)
                    signum = self._stop_requested()
                    if signum is not None:
                        if not saved:
                            self._save(done, val if val_step == done else None)
                        interrupted = TrainingInterrupted(signum, done, self.last_checkpoint, str(self.out_dir))
                        if self.main:
                            console.print(f"[bold yellow]{interrupted}[/bold yellow]")
                        raise interrupted
        finally:
            if writer:
                writer.close()
            del data  # stops DataLoader workers
        steps_run = len(losses)
        throughput = steps_run * self.effective_batch / max(train_time, 1e-9)
        final = cfg.steps
        if self.main:
            summary(
                f"{type(self.task).__name__}: step {final}/{cfg.steps}, loss {losses[final]:.4g}, lr {lr:.2e}, "
                f"{throughput:.1f} samples/s over {steps_run} steps, checkpoint {self.last_checkpoint}"
                + (", val " + ", ".join(f"{k} {v:.4g}" for k, v in val.items()) if val else "")
            )
        return TrainResult(final, losses[final], self.last_checkpoint, throughput, losses, val)

    def _stop_requested(self) -> int | None:
        """The signal that asked to stop, agreed by all processes (any one signalled stops them all at this step)."""
        signum = self.stop.signum or 0
        if self.world > 1:
            signum = int(self.accelerator.reduce(torch.tensor([signum], device=self.accelerator.device), "max").item())
        return signum or None

    def _optimizer_step(self, data: Iterator[Any], step: int) -> tuple[float, dict[str, float]]:
        """One optimizer step over `grad_accum` micro-batches; returns the loss averaged over processes and micro-batches."""
        cfg = self.cfg
        total = 0.0
        logs: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(data), self.accelerator.device)
            sync = micro == cfg.grad_accum - 1
            # FSDP's no_sync would keep full unsharded gradients: it reduce-scatters every micro-batch instead.
            with (nullcontext() if sync or self.fsdp else self.accelerator.no_sync(self.model)), self.accelerator.autocast():
                loss, logs = self.task.training_loss(self.model, batch, step, self.generator)
            value = loss.detach().float()
            # One all-reduce: the summed loss and whether any process saw a non-finite one (all stop together).
            stats = self.accelerator.reduce(torch.stack([torch.nan_to_num(value), (~torch.isfinite(value)).float()]), "sum")
            if stats[1] > 0:
                self._stop_non_finite(step + 1, f"loss {value.item()} (micro-batch {micro}, this process)" if not torch.isfinite(value) else "loss on another process")
            total += stats[0].item() / self.world
            self.accelerator.backward(loss / cfg.grad_accum)
        if cfg.clip_grad > 0:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            if norm is not None and not torch.isfinite(norm) and self.accelerator.scaler is None:
                self._stop_non_finite(step + 1, f"gradient norm {float(norm)}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / cfg.grad_accum, logs

    def _stop_non_finite(self, step: int, what: str) -> None:
        kept = self.last_checkpoint or ckpt.latest_checkpoint(self.out_dir) or "none (no checkpoint was written yet)"
        raise NonFiniteLossError(
            f"non-finite {what} at step {step}: training stopped before updating the weights. The last good "
            f"checkpoint is kept: {kept}. Lower the learning rate, keep train.clip_grad > 0, check the cache for "
            f"NaNs, then continue with --resume."
        )

    def _validate(self) -> dict[str, float]:
        loader = self.val_factory(LoaderRequest(self.rank, self.world, self.cfg.batch_size, 0, self.cfg.seed))
        if loader is None:
            return {}
        batches: Iterable[Any] = (_to_device(b, self.accelerator.device) for b in loader)
        if self.cfg.val_batches > 0:
            batches = itertools.islice(batches, self.cfg.val_batches)
        was_training = self.raw.training
        self.raw.eval()
        try:
            with _preserved_rng(self.generator), torch.no_grad(), self.accelerator.autocast(), self._root_params():
                metrics = self.task.validate(self.raw, batches)
        finally:
            self.raw.train(was_training)
        if not metrics:
            return {}
        keys = sorted(metrics)
        values = self.accelerator.reduce(torch.tensor([float(metrics[k]) for k in keys], device=self.accelerator.device), "sum") / self.world
        return {k: float(v) for k, v in zip(keys, values)}

    def _root_params(self):
        """Validation calls the unwrapped model's methods, not the FSDP root's forward: under FSDP, gather the root
        unit's own parameters (embeddings, heads) for it; the wrapped blocks still gather theirs in their forward."""
        if not self.fsdp:
            return nullcontext()
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(self.model, recurse=False, writeback=False)

    def _save(self, step: int, val: dict[str, float] | None = None) -> None:
        if not _all_finite(self.raw):
            self._stop_non_finite(step, "weights")
        rngs = _gather_objects(_rng_state(self.generator), self.world)
        if self.fsdp:  # collectives on every rank; the full copies land on rank 0's CPU
            model_state = fsdp.full_state_dict(self.model)
            ema_state = self.ema.full_state_dict() if self.ema is not None else None
            optimizer_state = fsdp.full_optimizer_state(self.model, self.optimizer.optimizer, self.param_names)
        elif self.main:
            model_state = self.raw.state_dict()
            ema_state = self.ema.state_dict() if self.ema is not None else None
            optimizer_state = self.optimizer.state_dict()
        if self.main:
            consumed = step * self.effective_batch
            position = self.sampler_position(consumed) if self.sampler_position else {"samples_consumed": consumed}
            config = {
                **self.extra_meta,
                "model": self.model_config,
                "config": self.full_config,
                "cache_fingerprint": self.cache_fingerprint,
                "step": step,
                "world_size": self.world,
                "effective_batch": self.effective_batch,
                "lr": scaled_lr(self.cfg_optim, self.effective_batch),
                "task": type(self.task).__name__,
                "ema": self.ema.describe() if self.ema is not None else None,
                "val": val,  # validation metrics at this step (None when none ran here)
            }
            state = {
                "step": step,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
                "rng": rngs,
                "data": {**position, "global_batch": self.global_batch},
                "ema": {"updates": self.ema.updates} if self.ema is not None else None,
            }
            path = ckpt.save_checkpoint(
                self.out_dir, step, model_state=model_state, config=config, train_state=state, ema_state=ema_state,
            )
            self.last_checkpoint = str(path)
            selection = getattr(self.task, "selection", None)  # (metric, min|max, default choice, why)
            if selection is not None:
                metric, mode, default, why = selection
                if ckpt.update_selection(self.out_dir, step, val or {}, metric, mode, default, why):
                    console.print(f"step {step}: best validation {metric} so far ({val[metric]:.6g})")
            # After the selection is updated, so the best checkpoint is known; never the one just written.
            ckpt.prune_checkpoints(self.out_dir, self.cfg.keep_last, self.cfg.keep_every, protect=(path,))
        self.accelerator.wait_for_everyone()
        if not self.main:
            self.last_checkpoint = str(ckpt.checkpoints_dir(self.out_dir) / ckpt.step_name(step))

    def _tensorboard(self) -> Any:
        if not self.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.out_dir / "tb"))
