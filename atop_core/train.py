"""Training: the classifier f, purifier pretraining with L_df, and AToP fine-tuning.

Each stage is a `*_step` function (one batch in, a dict of losses out) driven by `fit`, which owns
the loop, the progress bar, atomic checkpoints, resume and the per-epoch JSON log. Data order and
augmentation are drawn from generators seeded by (seed, epoch, step), so a resumed run repeats
exactly what an uninterrupted one would have done.

Under `torchrun` (`distributed.py`) each global batch, the same at any world size, is split into one
contiguous slice per rank; the trained networks run through DistributedDataParallel wrappers held
in `TrainState.parallel` while `fit` runs, each rank draws its randomness from (seed, epoch, step,
rank), metrics are averaged over the ranks, and rank 0 alone evaluates and writes the checkpoint
and logs. Checkpoints hold the bare networks' states, so a run resumes at any world size.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from atop_core import distributed
from atop_core.attacks import AttackConfig
from atop_core.attacks.eot import eot_loss, pgd_ascent
from atop_core.config import SEED_STRIDE, ClassifierConfig, FinetuneConfig, PurifierConfig
from atop_core.io import read_json, save_torch, write_json
from atop_core.nets.classifiers import single_view
from atop_core.nets.gan import d_hinge_loss, g_hinge_loss
from atop_core.nets.purifiers import AePurifier, resize_to, to_work_size
from atop_core.precision import BF16, FLOAT32, amp_enabled, autocast
from atop_core.progress import progress
from atop_core.transforms import RandomTransform

StepFn = Callable[[Tensor, Tensor, torch.Generator], dict[str, float]]
CraftFn = Callable[[Tensor, Tensor, torch.Generator], Tensor]  # (x, y, step generator) -> x'
EvalFn = Callable[[], dict[str, float]]


@dataclass
class TrainState:
    """Everything a stage must save to resume: networks, optimizers, schedules, position, log."""

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0  # (global) batches done in the current epoch
    log: list[dict] = field(default_factory=list)
    # DistributedDataParallel wrappers of `models` while `fit` runs under torchrun; not saved
    parallel: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def net(self, name: str) -> nn.Module:
        """What a step's training forward of network `name` goes through: its DDP wrapper under
        torchrun (a purifier's returns every stage, see `purifier_stages`), else the network.
        Attacks and evaluation use `models[name]` itself: DDP expects a backward after each of
        its forwards, and crafting differentiates only with respect to the input."""
        return self.parallel.get(name, self.models[name])

    def state_dict(self) -> dict:
        return {
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "epoch": self.epoch,
            "step": self.step,
            "log": self.log,
        }

    def load_state_dict(self, blob: dict) -> None:
        for group, parts in (
            ("models", self.models),
            ("optimizers", self.optimizers),
            ("schedulers", self.schedulers),
        ):
            for k, part in parts.items():
                part.load_state_dict(blob[group][k])
        self.epoch, self.step, self.log = blob["epoch"], blob["step"], blob["log"]


@contextmanager
def initial_weights(seed: int) -> Iterator[None]:
    """Networks built inside draw their initial weights from `seed` (the stage's configuration
    seed, part of its checkpoint's name), and the global generator is left as it was: the same
    configuration gives the same weights, run after run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:
        seed = (seed * SEED_STRIDE + k) % (2**63)
    return torch.Generator().manual_seed(seed)


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator of one step on this process: `_generator(seed, epoch, step)` in a single
    process; under torchrun one per rank, from (seed, epoch, step, rank), so the ranks' slices get
    their own augmentations, transforms and attack starts, and a rerun draws them again."""
    if distributed.world_size() == 1:
        return _generator(seed, epoch, step)
    return _generator(seed, epoch, step, distributed.rank())


def step_seed(g: torch.Generator) -> int:
    """A seed drawn from a step's generator: a stage reseeds its random transforms with it each
    step, so their draws, too, depend only on (seed, epoch, step) and resume exactly."""
    return int(torch.randint(0, 2**62, (1,), generator=g))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """The epoch's shuffled index batches; the last partial batch is dropped (as the authors'
    loaders did)."""
    order = torch.randperm(n, generator=_generator(seed, epoch))
    full = max(n // batch_size, 1)
    return list(order[: full * batch_size].view(full, -1)) if n >= batch_size else [order]


def augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Per-sample random translation (reflect-padded by 1/8 of the side) and horizontal flip."""
    n, c, h, w = x.shape
    pad = max(h // 8, 1)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows,
        cols,
    ]
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, out.flip(3), out)


def fit(
    name: str,
    state: TrainState,
    step_fn: StepFn,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    ckpt_path: Path,
    device: torch.device,
    eval_fn: EvalFn | None = None,
    save_every_s: float = 120.0,
) -> TrainState:
    """Run `step_fn` over shuffled uint8 `images` until `epochs` are done, resuming from
    `ckpt_path` when it holds an unfinished run; returns the state with its per-epoch log.
    Steps run under bf16 autocast where `ATOP_AMP` turns it on (`precision.py`; parameters and
    optimiser states stay float32); each epoch's log entry names its precision. The checkpoint
    holds only what the run computed, so the same configuration gives the same bytes; each
    epoch's wall time goes to the human-readable log beside it.

    Under torchrun every rank calls `fit` and trains its slice of each batch through DDP; metrics
    are averaged over the ranks, `eval_fn` runs on rank 0 (its result sent to all), rank 0 alone
    writes the checkpoint and logs, and every rank returns rank 0's weights."""
    ckpt_path = Path(ckpt_path)
    if ckpt_path.exists():  # every rank: the file rank 0 wrote before the last barrier
        state.load_state_dict(torch.load(ckpt_path, map_location=device, weights_only=False))
    if state.epoch < epochs:
        state.parallel = distributed.data_parallel(state.models, device)
    amp = amp_enabled(device)  # once per run: every step and log entry agree
    saver = _PeriodicSave(ckpt_path, state, save_every_s)
    while state.epoch < epochs:
        start = time.monotonic()
        means = _run_epoch(
            f"{name} epoch {state.epoch + 1}/{epochs}",
            state,
            step_fn,
            images,
            labels,
            batch_size,
            seed,
            device,
            amp,
            saver,
        )
        entry = {"epoch": state.epoch + 1, **means, "precision": BF16 if amp else FLOAT32}
        state.log.append({**entry, **(distributed.on_main(eval_fn) if eval_fn else {})})
        state.epoch, state.step = state.epoch + 1, 0
        if distributed.is_main():
            _end_epoch(name, state, ckpt_path, round(time.monotonic() - start, 1))
        saver.saved()
    if state.parallel:
        state.parallel = {}
        for model in state.models.values():  # BatchNorm statistics: rank 0's, as checkpointed
            distributed.broadcast_state(model)
    distributed.barrier()  # the checkpoint is written before any rank reads it or goes on
    return state


class _PeriodicSave:
    """Saves a stage's state mid-epoch when `every_s` seconds have passed since the last save."""

    def __init__(self, path: Path, state: TrainState, every_s: float):
        self.path, self.state, self.every_s = path, state, every_s
        self.saved()

    def saved(self) -> None:
        self.last = time.monotonic()

    def maybe(self) -> None:
        if distributed.is_main() and time.monotonic() - self.last > self.every_s:
            save_torch(self.path, self.state.state_dict())
            self.saved()


def _run_epoch(
    desc: str,
    state: TrainState,
    step_fn: StepFn,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    seed: int,
    device: torch.device,
    amp: bool,
    saver: _PeriodicSave,
) -> dict[str, float]:
    """The rest of the current epoch, from batch `state.step`; returns the metrics' means (over
    the ranks too, under torchrun, where each rank trains its slice of every batch)."""
    batches = epoch_batches(len(images), batch_size, seed, state.epoch)
    bar = progress(
        batches,
        desc=desc,
        initial=state.step,
        total=len(batches),
        leave=False,
        disable=not distributed.is_main(),
    )
    sums, count = {}, 0
    for batch in batches[state.step :]:
        idx = distributed.batch_slice(batch)
        x = images[idx].to(device, non_blocking=True).float().div_(255)
        g = step_generator(seed, state.epoch, state.step)
        with autocast(device, amp):
            metrics = step_fn(x, labels[idx].to(device), g)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        count, state.step = count + 1, state.step + 1
        bar.update()
        bar.set_postfix({k: f"{v / count:.3f}" for k, v in sums.items()})
        saver.maybe()
    bar.close()
    return distributed.all_reduce_mean({k: v / max(count, 1) for k, v in sums.items()})


def _end_epoch(name: str, state: TrainState, ckpt_path: Path, train_s: float) -> None:
    """Checkpoint, then the status file (epochs done, the checkpoint's hash, each epoch's wall
    time) and the log with those times, all written atomically."""
    status_path = ckpt_path.with_suffix(".json")
    times = read_json(status_path).get("train_s", []) if status_path.exists() else []
    times = (times + [None] * state.epoch)[: state.epoch - 1] + [train_s]
    digest = save_torch(ckpt_path, state.state_dict())
    write_json(
        ckpt_path.with_suffix(".log.json"),
        [{**entry, "train_s": t} for entry, t in zip(state.log, times, strict=True)],
    )
    write_json(
        status_path,
        {
            "stage": name,
            "epochs_done": state.epoch,
            "sha256": digest,
            "file": ckpt_path.name,
            "train_s": times,
        },
    )


# --- the classifier -----------------------------------------------------------------------------


def classifier_state(model: nn.Module, cfg: ClassifierConfig, steps_per_epoch: int) -> TrainState:
    """SGD with Nesterov momentum; the learning rate rises linearly for the first quarter of the
    run, then falls linearly to zero (a triangular one-cycle schedule)."""
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
    )
    total = cfg.epochs * steps_per_epoch
    warm = max(1, total // 4)

    def factor(step: int) -> float:
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(total - warm, 1))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return TrainState({"classifier": model}, {"classifier": opt}, {"classifier": sched})


def classifier_step(state: TrainState, cfg: ClassifierConfig) -> StepFn:
    model, opt = state.models["classifier"], state.optimizers["classifier"]
    sched = state.schedulers["classifier"]

    def step(x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, float]:
        x = augment(x, g).contiguous(memory_format=torch.channels_last)
        if cfg.adv != "none":
            x = adversarial_training_examples(model, x, y, cfg, g)
        model.train()
        logits = state.net("classifier")(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

    return step


def adversarial_training_examples(
    model: nn.Module, x: Tensor, y: Tensor, cfg: ClassifierConfig, g: torch.Generator
) -> Tensor:
    """The adversarial-training baseline's inputs: FGSM with a random start and step 1.25·ε (Wong
    et al. 2020) or PGD-k with step 2.5·ε/k (Madry et al. 2018), crafted on the single view that
    training fits (flip averaging, an evaluation-time choice, would double their cost)."""
    model.eval()
    eps = cfg.adv_eps
    steps, alpha = (
        (1, 1.25 * eps) if cfg.adv == "fgsm-rs" else (cfg.adv_steps, 2.5 * eps / cfg.adv_steps)
    )
    with single_view(model):
        return linf_attack(model, x, y, eps, steps, alpha, g, start=True)


@torch.no_grad()
def accuracy(
    model: nn.Module, images: Tensor, labels: Tensor, device: torch.device, batch_size: int = 500
) -> float:
    """Top-1 accuracy of `model` on uint8 `images` (model put in eval mode)."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float().div_(255)
        correct += (model(x).argmax(1).cpu() == labels[i : i + batch_size]).sum().item()
    return correct / len(images)


# --- the purifier: pretraining (L_df) and AToP fine-tuning --------------------------------------


def purifier_state(
    purifier: nn.Module, discriminator: nn.Module | None, lr: float, betas: tuple[float, float]
) -> TrainState:
    """Adam for g and, for the GAN, its own Adam for D (DeepFillv2's, kept by the authors)."""
    models = {"purifier": purifier}
    opts = {"purifier": torch.optim.Adam(purifier.parameters(), lr=lr, betas=betas)}
    if discriminator is not None:
        models["discriminator"] = discriminator
        opts["discriminator"] = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    return TrainState(models, opts)


def l_df(
    purifier: nn.Module,
    discriminator: nn.Module | None,
    copies: Tensor,
    keep: Tensor,
    target: Tensor,
    gan_weight: float,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """L_df for g: ℓ1 of every stage against `target`, plus the hinge GAN term when there is a D.
    `purifier`: the network, or its DDP wrapper (`TrainState.net`). Returns (loss, last-stage
    output, metrics)."""
    stages = purifier_stages(purifier, copies, keep)
    l1 = sum(F.l1_loss(s, target) for s in stages)
    metrics = {"l1": stages[-1].sub(target).abs().mean().item()}
    loss = l1
    if discriminator is not None:
        g_adv = g_hinge_loss(discriminator(stages[-1], keep))
        loss = loss + gan_weight * g_adv
        metrics["g_adv"] = g_adv.item()
    return loss, stages[-1], metrics


def purifier_stages(purifier: nn.Module, copies: Tensor, keep: Tensor) -> list[Tensor]:
    """Every stage's output: `purifier.stages`, or the forward of its DDP wrapper (which wraps the
    purifier's `distributed.StagesView`, DDP hooking only forwards)."""
    if isinstance(purifier, DistributedDataParallel):
        return purifier(copies, keep)
    return purifier.stages(copies, keep)


def discriminator_step(state: TrainState, real: Tensor, fake: Tensor, keep: Tensor) -> float:
    disc, opt = state.net("discriminator"), state.optimizers["discriminator"]
    loss = d_hinge_loss(disc(real, keep), disc(fake.detach(), keep))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def purifier_layout(purifier: nn.Module) -> torch.memory_format:
    """The memory format a purifier trains in: channels_last for the AE, whose training step ran
    1.16x faster in it on 2 CPU cores (237 -> 205 ms at batch 128); the default for the GAN, whose
    full pretraining step (with D's) measured between 11% slower and 6% faster in it."""
    return torch.channels_last if isinstance(purifier, AePurifier) else torch.contiguous_format


def pretrain_step(state: TrainState, transform: RandomTransform, cfg: PurifierConfig) -> StepFn:
    """Pretraining on clean data: g learns to undo the random transform."""
    purifier, opt = state.models["purifier"], state.optimizers["purifier"]
    disc = state.models.get("discriminator")  # g's hinge term: D itself; its gradient is dropped

    def step(x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, float]:
        x = augment(x, g).contiguous(memory_format=purifier_layout(purifier))
        x = to_work_size(x, purifier)  # the loss, like t and g, works at the working size
        purifier.train()
        transform.seed(step_seed(g))
        copies, keep = transform(x)
        loss, out, metrics = l_df(state.net("purifier"), disc, copies, keep, x, cfg.gan_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if disc is not None:  # after g's step: D's update must not touch g's graph
            metrics["d"] = discriminator_step(state, x, out, keep)
        return metrics

    return step


def finetune_step(
    state: TrainState,
    transform: RandomTransform,
    classifier: nn.Module,
    cfg: FinetuneConfig,
    gan_weight: float,
    make_adversarial: CraftFn,
) -> StepFn:
    """AToP: L_df(x') + λ·CE(y, f(g(t(x')))); f is frozen, so only g (and D) move."""
    purifier, opt = state.models["purifier"], state.optimizers["purifier"]
    disc = state.models.get("discriminator")  # g's hinge term: D itself; its gradient is dropped

    def step(x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, float]:
        x = x.contiguous(memory_format=purifier_layout(purifier))
        x_adv = to_work_size(make_adversarial(x, y, g), purifier)
        target = x_adv if cfg.target == "adv" else to_work_size(x, purifier)
        purifier.train()
        transform.seed(step_seed(g))
        copies, keep = transform(x_adv)
        loss, out, metrics = l_df(state.net("purifier"), disc, copies, keep, target, gan_weight)
        logits = classifier(resize_to(transform.combine(out, keep), x.shape[-2:]))
        ce = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        (loss + cfg.lam * ce).backward()
        opt.step()
        if disc is not None:
            metrics["d"] = discriminator_step(state, target, out, keep)
        metrics.update(ce=ce.item(), acc=(logits.argmax(1) == y).float().mean().item())
        return metrics

    return step


def finetune_inputs(cfg: FinetuneConfig, model: nn.Module) -> CraftFn:
    """The images x' AToP fine-tunes on, crafted against `model` (the bare classifier in the
    authors' code): FGSM (the paper's), PGD-k with a random start from the step's generator and
    step 2.5·ε/k, or with attack "none" the clean images themselves."""
    if cfg.attack == "fgsm":
        return lambda x, y, g: linf_attack(model, x, y, cfg.eps, steps=1, alpha=cfg.eps, g=g)
    if cfg.attack == "pgd":
        alpha = 2.5 * cfg.eps / cfg.steps
        return lambda x, y, g: linf_attack(model, x, y, cfg.eps, cfg.steps, alpha, g, start=True)
    return lambda x, y, g: x


def linf_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    alpha: float,
    g: torch.Generator,
    start: bool = False,
) -> Tensor:
    """The attack module's L∞ projected gradient ascent on the cross-entropy (one draw per step),
    its last iterate: FGSM (Goodfellow et al. 2015) is one step of ε from x, FGSM-RS and PGD-k
    (Wong et al. 2020; Madry et al. 2018) start at a random point of the ball drawn from `g`."""
    cfg = AttackConfig("pgd", eps=eps, steps=steps, alpha=alpha, eot=1)
    return pgd_ascent(eot_loss, model, x, y, cfg, g, random_start=start)
