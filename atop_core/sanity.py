"""Sanity checks against gradient masking, run with every evaluation.

After Carlini et al., "On Evaluating Adversarial Robustness" (2019): on the first `n` evaluation
images, rerun the attack with a huge budget (accuracy must collapse), with twice the steps and
EOT draws (accuracy must not rise beyond the interval; StAdv gets this one of the two), as a
transfer attack from the bare classifier and as Square, a black-box attack (neither may beat the
white-box attack beyond the interval), and against the bare classifier (which must fall to about
0; on all the record's images, which is cheap). A failed check marks the record `unreliable`; a
check that does not apply says why instead of passing.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atop_core.attacks import AttackConfig
from atop_core.defense import RandomDefense
from atop_core.harness import evaluate
from atop_core.precision import precision_name
from atop_core.records import wilson_interval

NEAR_ZERO = 0.10  # "accuracy near 0": at most this fraction survives a huge budget
LARGE_EPS_FACTOR = 16  # the huge budget: 16 × ε (8/255 -> 0.5 in L∞, capped at 1; 0.5 -> 8 in L2)
ITERATIVE = ("bim", "pgd", "pgd-l2", "eot-pgd", "apgd", "apgd-l2", "pgd-eot", "pgd-eot-l2")
ITERATIVE += ("bpda-eot",)
# StAdv's Adam steps move the flow by about lr each, so a 16× bound is out of its reach in the
# same steps: it gets the more-budget check only (twice the steps and EOT draws).
MORE_BUDGET_ONLY = ("stadv",)
NORM_BOUNDED = ("fgsm", *ITERATIVE, "autoattack", "autoattack-rand", "autoattack-l2")
NORM_BOUNDED += ("autoattack-rand-l2",)
# Attacks strong enough to break an undefended classifier outright (FGSM is not: one step).
BARE_CHECKED = (*ITERATIVE, "autoattack", "autoattack-rand", "autoattack-l2", "autoattack-rand-l2")
BARE_CHECKED += ("cw-l2", "stadv")


# Accuracies this process has measured, by network, attack, protocol, images and judging: the
# records of one defense rerun the same Square, and every defense on one classifier the same
# bare-classifier attack, so each runs once (at the paper profile Square alone is 1,000 queries
# on 128 images per record). Only callers that name their networks (`identity`) share.
_MEASURED: dict[tuple, float] = {}


def network_digest(net: nn.Module) -> str:
    """A network's identity for `sanity_checks`: the SHA-256 of its parameters and buffers."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _accuracy(
    net: nn.Module, attack: AttackConfig, data: tuple, protocol: str, who: str | None, **kw
) -> float:
    key = None
    if who is not None:
        images = hashlib.sha256(b"".join(t.cpu().numpy().tobytes() for t in data))
        judging = json.dumps({k: str(v) for k, v in kw.items()}, sort_keys=True)
        attack_key = json.dumps(attack.describe(), sort_keys=True)
        precision = precision_name(kw["device"])  # ATOP_AMP may change within a process
        key = (who, attack_key, protocol, images.hexdigest(), judging, precision)
        if key in _MEASURED:
            return _MEASURED[key]
    acc = evaluate(net, attack, *data, protocol, **kw)["accuracy"]["single"]
    if key is not None:
        _MEASURED[key] = acc
    return acc


def _no_higher(white_box: float, other: float, n: int) -> bool:
    """The white-box accuracy is not above the other attack's Wilson upper bound."""
    return white_box <= wilson_interval(round(other * n), n)[1]


@dataclass(frozen=True)
class _Checking:
    """What every check of one record shares: the defense, the record's attack and its
    white-box accuracy on `data`, and how each check's own attack runs (`run_kw`)."""

    defense: nn.Module
    attack: AttackConfig
    data: tuple[Tensor, Tensor]
    protocol: str
    white_box: float
    run_kw: dict
    identity: tuple[str, str] | tuple[None, None]

    def accuracy(
        self,
        attack: AttackConfig,
        protocol: str | None = None,
        model: nn.Module | None = None,
        data: tuple[Tensor, Tensor] | None = None,
    ) -> float:
        """Single-draw accuracy under `attack` (of the defense, unless `model` is given)."""
        whole, bare = self.identity
        return _accuracy(
            self.defense if model is None else model,
            attack,
            self.data if data is None else data,
            protocol or self.protocol,
            whole if model is None else bare,
            **self.run_kw,
        )

    def no_higher_than(self, other: float) -> bool:
        return _no_higher(self.white_box, other, len(self.data[0]))


def sanity_checks(
    defense: nn.Module,
    attack: AttackConfig,
    images: Tensor,
    labels: Tensor,
    protocol: str,
    white_box: float,
    device: torch.device,
    *,
    draws: int,
    batch_size: int,
    square_queries: int,
    defense_seed: int = 0,
    randomness: str = "fresh",
    identity: tuple[str, str] | None = None,
    bare_data: tuple[Tensor, Tensor] | None = None,
) -> dict:
    """Every check's verdict on `images` (uint8), given the attack's single-draw
    `white_box` accuracy on exactly these images. `identity`, the (defense, bare classifier)
    digests, lets checks that repeat across records run once per process. `bare_data`, (images,
    labels), are what the bare-classifier check attacks instead (records pass all theirs: no
    purifier and one draw make it cheap, and on 8 images one survivor decides it). `randomness`
    is the record's (frozen: every check shares each image's one draw). Returns
    {check: {"passed": bool | None, ...}}."""
    if attack.name == "clean":
        return {"all": {"passed": None, "reason": "clean accuracy is not an attack"}}
    run_kw = {"device": device, "draws": draws, "batch_size": batch_size}
    run_kw |= {"defense_seed": defense_seed, "randomness": randomness}  # the record's randomness
    ctx = _Checking(
        defense, attack, (images, labels), protocol, white_box, run_kw, identity or (None, None)
    )
    return {
        "large_eps": _large_eps(ctx),
        "more_budget": _more_budget(ctx),
        "transfer": _transfer(ctx),
        "square": _square(ctx, square_queries),
        "bare_classifier": _bare_classifier(ctx, bare_data or ctx.data),
    }


def _large_eps(ctx: _Checking) -> dict:
    """At 16x the budget an iterative gradient attack must drive accuracy to near zero."""
    name, attack = ctx.attack.name, ctx.attack
    if name in MORE_BUDGET_ONLY:
        return {"passed": None, "reason": f"{name}'s steps cannot reach 16x its bound"}
    if name not in ITERATIVE:
        return {"passed": None, "reason": f"{name} is not an iterative gradient attack"}
    huge = attack.eps * LARGE_EPS_FACTOR
    huge = min(1.0, huge) if attack.norm == "linf" else huge
    acc = ctx.accuracy(dataclasses.replace(attack, eps=huge, alpha=None))  # alpha follows eps
    return {"passed": acc <= NEAR_ZERO, "accuracy": acc, "eps": huge}


def _more_budget(ctx: _Checking) -> dict:
    """Twice the steps and draws must not find fewer adversarial examples."""
    name, attack = ctx.attack.name, ctx.attack
    if name not in (*ITERATIVE, *MORE_BUDGET_ONLY):
        return {"passed": None, "reason": f"{name} is not an iterative gradient attack"}
    more = dataclasses.replace(attack, steps=attack.steps * 2, eot=attack.eot * 2)
    acc = ctx.accuracy(more)
    return {
        "passed": _no_higher(acc, ctx.white_box, len(ctx.data[0])),
        "accuracy": acc,
        "reference": ctx.white_box,
        "steps": more.steps,
        "eot": more.eot,
    }


def _transfer(ctx: _Checking) -> dict:
    """The whole-model attack must be no weaker than the same attack on the classifier alone."""
    if not (
        ctx.attack.name in NORM_BOUNDED
        and ctx.protocol == "whole-model"
        and isinstance(ctx.defense, RandomDefense)
        and ctx.defense.classifier is not None
    ):
        return {"passed": None, "reason": "needs a whole-model run on a purifier"}
    acc = ctx.accuracy(ctx.attack, protocol="classifier-only")
    return {"passed": ctx.no_higher_than(acc), "accuracy": acc}


def _square(ctx: _Checking, queries: int) -> dict:
    """The gradient attack must be no weaker than Square, a black-box attack in the same ball."""
    attack = ctx.attack
    if attack.name not in NORM_BOUNDED:
        return {"passed": None, "reason": f"{attack.name} has no norm ball to match"}
    square = AttackConfig(
        name="square" if attack.norm == "linf" else "square-l2",
        eps=attack.eps,
        queries=queries,
        seed=attack.seed,
    )
    acc = ctx.accuracy(square)
    return {"passed": ctx.no_higher_than(acc), "accuracy": acc}


def _bare_classifier(ctx: _Checking, data: tuple[Tensor, Tensor]) -> dict:
    """The attack must break the undefended classifier behind the purifier."""
    bare = getattr(ctx.defense, "bare_classifier", None)
    if ctx.attack.name not in BARE_CHECKED or bare is None:
        reason = "needs a purifier and an attack that breaks undefended classifiers"
        return {"passed": None, "reason": reason}
    acc = ctx.accuracy(ctx.attack, "whole-model", model=bare, data=data)
    return {"passed": acc <= NEAR_ZERO, "accuracy": acc, "n": len(data[0])}


def unreliable(checks: dict) -> bool | None:
    """True if any check failed, False if some ran and all passed, None if none applied."""
    verdicts = [c["passed"] for c in checks.values() if c["passed"] is not None]
    return None if not verdicts else not all(verdicts)
