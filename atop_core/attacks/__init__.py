"""Attacks by name: torchattacks 3.5.1 where it has the attack, our own where not.

One name gives one configured attack: `run_attack(model, AttackConfig(name=...), x, y)` maps a
model ([0,1] images -> logits) and a batch in [0,1] to adversarial images in [0,1], detached.

- Budgets: `eps` left as None takes the threat model's default (L∞ 8/255, the paper; L2 0.5 and
  the StAdv flow bound 0.05, the DiffPure protocol); C&W-L2 is unbounded unless `eps` is given.
  Parameters an attack does not read are set to None, and left out of `describe()` and `tag()`.
- Randomness: every attack runs inside `torch.random.fork_rng()` seeded with `cfg.seed`
  (torchattacks draws its starts from the global generator); the caller's global stream is
  restored afterwards, and the defense draws from its transform's own generator regardless.
- EOT on a `DefendedModel`: our pgd-eot, pgd-eot-l2, bpda-eot (and stadv) batch `eot` draws into
  passes and average the loss over them; eot-pgd, apgd and autoattack-rand loop over `eot` draws
  themselves (torchattacks' `eot_iter`), seeing one draw per forward; every other attack sees a
  forward that averages logits over `eot` draws. The model's `eot` and `mode` are set for the
  attack and restored after it. On a plain classifier `eot` changes nothing.
- Precision: attacks run under bf16 autocast where `ATOP_AMP` turns it on (on CUDA by default;
  `precision.py`), except Square, whose query-by-query margin comparisons bf16 logits would round.
"""

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from types import MappingProxyType

import torch
from torch import Tensor, nn

from atop_core.attacks import cw, eot, library, stadv
from atop_core.attacks.eot import EOT_PASS, bpda_loss, eot_grad, eot_loss
from atop_core.config import EPS_LINF
from atop_core.defense import RandomDefense
from atop_core.precision import autocast
from atop_core.registry import Registry

EPS_L2 = 0.5  # DiffPure's L2 budget on CIFAR-10 (the paper's own is not known)
DEFAULT_EPS = {"linf": EPS_LINF, "l2": EPS_L2, "flow": stadv.FLOW_BOUND}
AA_EOT = 20  # AutoAttack's `rand` version: 20 EOT draws per gradient (Croce & Hein 2020)
AA_STEPS = 100  # APGD and FAB iterations in AutoAttack (torchattacks' AutoAttack uses 10)
SQUARE_QUERIES = 5000  # Square's budget in AutoAttack
PGD_STEPS = 10
CW_STEPS = STADV_STEPS = 100  # the paper's "CW-100"; DiffPure's StAdv runs 100 iterations
DEFAULT_CLASSES = 10  # CIFAR-10; pass num_classes for other datasets (checked against the model)
OPTIONAL = ("steps", "alpha", "queries", "search_steps", "const", "lr", "kappa", "tau")
TAG_KEYS = {"eps": "eps", "alpha": "alpha", "queries": "q", "search_steps": "bs", "const": "c"}
TAG_KEYS |= {"lr": "lr", "kappa": "kappa", "tau": "tau"}

# AttackSpec's switches, not defaults
FLAGS = ("steps_in_tag", "eot_loop", "targets_classes", "float32")
AttackRun = Callable[[nn.Module, Tensor, Tensor, "AttackConfig"], Tensor]
ATTACKS = Registry("attack")


def quarter_eps(eps: float) -> float:
    """Default PGD step: eps/4 = 2.5·eps/steps at 10 steps (Madry et al. 2018), 2/255 at 8/255."""
    return eps / 4


@dataclass(frozen=True)
class AttackSpec:
    """What a name means: how to run it, its threat model, and the defaults of the optional
    parameters it reads (a key present = the attack reads that parameter)."""

    run: AttackRun
    norm: str  # linf | l2 | flow (StAdv) | none (clean)
    defaults: Mapping[str, object] = field(default_factory=dict)
    steps_in_tag: bool = True  # False: steps appear in the tag only when not the default
    eot_loop: bool = False  # the attack loops over draws itself: the model's forward draws once
    targets_classes: bool = False  # reads num_classes (AutoAttack's targeted runs)
    # never autocast: Square compares losses query by query; clean runs nothing (its records
    # then never say bf16)
    float32: bool = False


def _register(name: str, run: AttackRun, norm: str, **options: object) -> None:
    flags = {k: options.pop(k) for k in FLAGS if k in options}
    ATTACKS.register(name)(AttackSpec(run, norm, MappingProxyType(options), **flags))


_PGD = {"steps": PGD_STEPS, "alpha": quarter_eps}
_AA = {"steps": AA_STEPS, "steps_in_tag": False}
_AA_STANDARD = {**_AA, "queries": SQUARE_QUERIES, "targets_classes": True}
_AA_RAND = {**_AA, "eot": AA_EOT, "eot_loop": True}
_CW = {"eps": math.inf, "steps": CW_STEPS, "search_steps": cw.SEARCH_STEPS, "lr": cw.LR}
_CW |= {"const": cw.INITIAL_CONST, "kappa": 0.0}
_register("clean", library.clean, "none", float32=True)
_register("fgsm", library.fgsm, "linf")
_register("bim", library.bim, "linf", **_PGD)
_register("pgd", library.pgd, "linf", **_PGD)
_register("pgd-l2", library.pgd_l2, "l2", **_PGD)
_register("eot-pgd", library.eot_pgd, "linf", **_PGD, eot_loop=True)
_register("apgd", library.apgd, "linf", steps=AA_STEPS, eot_loop=True)
_register("apgd-l2", library.apgd, "l2", steps=AA_STEPS, eot_loop=True)
_register("autoattack", library.autoattack, "linf", **_AA_STANDARD)
_register("autoattack-l2", library.autoattack, "l2", **_AA_STANDARD)
_register("autoattack-rand", library.autoattack_rand, "linf", **_AA_RAND)
_register("autoattack-rand-l2", library.autoattack_rand, "l2", **_AA_RAND)
_register("square", library.square, "linf", queries=SQUARE_QUERIES, float32=True)
# the sanity check's L2 Square
_register("square-l2", library.square, "l2", queries=SQUARE_QUERIES, float32=True)
_register("cw-l2", cw.cw_l2, "l2", **_CW)
_register("stadv", stadv.stadv, "flow", steps=STADV_STEPS, lr=stadv.LR, tau=stadv.TAU)
_register("bpda-eot", eot.bpda_eot, "linf", **_PGD)
_register("pgd-eot", eot.pgd_eot, "linf", **_PGD)
_register("pgd-eot-l2", eot.pgd_eot, "l2", **_PGD)


@dataclass(frozen=True)
class AttackConfig:
    """One configured attack. None means "the attack's default" and is resolved on construction
    (see `describe()`); `norm` follows from the name.

    eps: L∞ or L2 radius on the [0,1] scale, or StAdv's flow bound (see `stadv.py`).
    steps: iterations (C&W and StAdv: Adam steps, per binary-search step for C&W).
    alpha: PGD step, default eps/4.  eot: transform draws per gradient (see the module doc).
    num_classes: AutoAttack's targeted runs use min(9, num_classes - 1) target classes.
    queries: Square's budget (also AutoAttack's Square).  search_steps, const, lr, kappa: C&W's
    binary-search steps, initial constant, Adam rate and confidence.  tau: StAdv's weight of
    the flow-smoothness loss (lr is its Adam rate).
    """

    name: str = "pgd"
    eps: float | None = None
    steps: int | None = None
    alpha: float | None = None
    eot: int | None = None
    seed: int = 0
    num_classes: int | None = None
    queries: int | None = None
    search_steps: int | None = None
    const: float | None = None
    lr: float | None = None
    kappa: float | None = None
    tau: float | None = None

    def __post_init__(self) -> None:
        spec = ATTACKS.get_entry(self.name)  # refuses unknown names, listing the known ones
        _check_values(self)
        for key, value in _resolve(spec, self).items():
            object.__setattr__(self, key, value)

    @property
    def norm(self) -> str:
        return ATTACKS[self.name].norm

    def describe(self) -> dict:
        """Every parameter the attack reads, resolved, plus its norm (for records)."""
        out = {"name": self.name, "norm": self.norm}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
        if values["eps"] == math.inf:  # unbounded (C&W): no eps, as strict JSON has no Infinity
            values["eps"] = None
        return out | {k: v for k, v in values.items() if v is not None}

    def tag(self) -> str:
        """A short file-name tag, unique per resolved configuration: "pgd-10", "pgd-eot-10-eot4",
        "autoattack", "cw-l2-100", "pgd-eot-20-eot4-eps0.0627" (eps differs from the default).
        The steps appear for iterative attacks (for AutoAttack only when not its standard 100),
        the draws when eot > 1, and any other parameter that is not its default."""
        spec = ATTACKS[self.name]
        parts = [self.name]
        if self.steps is not None and (spec.steps_in_tag or self.steps != spec.defaults["steps"]):
            parts.append(str(self.steps))
        if self.eot is not None and self.eot > 1:
            parts.append(f"eot{self.eot}")
        for key, short in TAG_KEYS.items():
            value = getattr(self, key)
            if value is not None and value != _default(spec, key, self.eps):
                parts.append(f"{short}{value}" if isinstance(value, int) else f"{short}{value:.3g}")
        return "-".join(parts)


def _default(spec: AttackSpec, key: str, eps: float | None) -> object:
    if key == "eps":
        return spec.defaults.get("eps", DEFAULT_EPS.get(spec.norm))
    value = spec.defaults.get(key)
    return value(eps) if callable(value) else value


def _resolve(spec: AttackSpec, cfg: AttackConfig) -> dict:
    """The resolved value of every optional field: given, else the default; None if unread."""
    bounded = spec.norm != "none"
    eps = (cfg.eps if cfg.eps is not None else _default(spec, "eps", None)) if bounded else None
    eot = (cfg.eot if cfg.eot is not None else spec.defaults.get("eot", 1)) if bounded else None
    out = {"eps": eps, "eot": eot}
    for key in OPTIONAL:
        given = getattr(cfg, key)
        read = key in spec.defaults
        out[key] = (given if given is not None else _default(spec, key, eps)) if read else None
    classes = cfg.num_classes if cfg.num_classes is not None else DEFAULT_CLASSES
    out["num_classes"] = classes if spec.targets_classes else None
    return out


LIMITS = {  # field: (lowest value, whether the lowest is allowed, what to pass instead)
    "eps": (0, True, "a budget on the [0,1] pixel scale, or None for the attack's default"),
    "kappa": (0, True, "a confidence margin >= 0"),
    "tau": (0, True, "a loss weight >= 0"),
    "alpha": (0, False, "a step size > 0, or None for eps/4"),
    "const": (0, False, "a C&W constant > 0"),
    "lr": (0, False, "a learning rate > 0"),
    "steps": (1, True, "at least 1 iteration"),
    "eot": (1, True, "at least 1 draw per gradient"),
    "queries": (1, True, "at least 1 query"),
    "search_steps": (1, True, "at least 1 binary-search step"),
    "num_classes": (2, True, "the classifier's number of classes"),
}


def _check_values(cfg: AttackConfig) -> None:
    """Refuse out-of-range values, naming the field, the value and the fix (NaN included)."""
    for key, (low, inclusive, fix) in LIMITS.items():
        value = getattr(cfg, key)
        if value is None or (value >= low if inclusive else value > low):
            continue
        raise ValueError(
            f"{key} must be {'>=' if inclusive else '>'} {low}, got {value}; pass {fix}"
        )


def check_inputs(x: Tensor, y: Tensor) -> None:
    """Images (B, C, H, W) in [0, 1] and one label each: torchattacks 3.5 no longer checks."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"images must be a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError(
            f"images must lie in [0, 1], got [{x.min():.3f}, {x.max():.3f}]; "
            "divide uint8 images by 255 and undo any normalisation (the classifier does it)"
        )
    if y.shape != x.shape[:1]:
        raise ValueError(f"need one label per image, got {tuple(y.shape)} for {len(x)} images")


@contextmanager
def attack_mode(model: nn.Module, draws: int) -> Iterator[None]:
    """While attacking: no parameter takes gradients (attacks differentiate the input only; FAB
    calls .backward(), which would fill the model's .grad), and a random defense's forward is the
    mean logits of `draws` transform draws (mode "eot": a vote has no gradient). Everything is
    restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    defended = isinstance(model, RandomDefense)
    saved = (model.eot, model.mode) if defended else None
    for p in params:
        p.requires_grad_(False)
    if defended:
        model.eot, model.mode = draws, "eot"
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        if defended:
            model.eot, model.mode = saved


def run_attack(model: nn.Module, cfg: AttackConfig, x: Tensor, y: Tensor) -> Tensor:
    """Adversarial images for (x, y), detached; the model is put in eval mode and left there.
    The attack's passes run under bf16 autocast where `ATOP_AMP` turns it on (`precision.py`)."""
    check_inputs(x, y)
    spec = ATTACKS[cfg.name]
    model.eval()
    draws = 1 if spec.eot_loop or cfg.eot is None else cfg.eot
    devices = [x.device] if x.device.type == "cuda" else []
    precision = nullcontext() if spec.float32 else autocast(x.device)
    with attack_mode(model, draws), torch.random.fork_rng(devices=devices), precision:
        torch.manual_seed(cfg.seed)
        return spec.run(model, x, y, cfg).detach().to(x.dtype)


__all__ = [
    "ATTACKS",
    "EOT_PASS",
    "AttackConfig",
    "AttackSpec",
    "bpda_loss",
    "eot_grad",
    "eot_loss",
    "run_attack",
]
