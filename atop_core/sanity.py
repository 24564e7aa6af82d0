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

import torch
from torch import Tensor, nn

from atop_core.attacks import AttackConfig
from atop_core.defense import DefendedModel
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
    n, data = len(images), (images, labels)
    kw = {"device": device, "draws": draws, "batch_size": batch_size, "defense_seed": defense_seed}
    kw["randomness"] = randomness  # the checks see the record's randomness
    whole, bare = identity or (None, None)
    name, norm = attack.name, attack.norm
    checks: dict[str, dict] = {}
    if name == "clean":
        return {"all": {"passed": None, "reason": "clean accuracy is not an attack"}}

    if name in ITERATIVE:
        huge = (
            min(1.0, attack.eps * LARGE_EPS_FACTOR)
            if norm == "linf"
            else attack.eps * LARGE_EPS_FACTOR
        )
        cfg = dataclasses.replace(attack, eps=huge, alpha=None)  # alpha follows the new eps
        acc = _accuracy(defense, cfg, data, protocol, whole, **kw)
        checks["large_eps"] = {"passed": acc <= NEAR_ZERO, "accuracy": acc, "eps": huge}
    elif name in MORE_BUDGET_ONLY:
        reason = f"{name}'s steps cannot reach 16x its bound"
        checks["large_eps"] = {"passed": None, "reason": reason}
    else:
        reason = f"{name} is not an iterative gradient attack"
        checks["large_eps"] = checks["more_budget"] = {"passed": None, "reason": reason}
    if name in (*ITERATIVE, *MORE_BUDGET_ONLY):
        more = dataclasses.replace(attack, steps=attack.steps * 2, eot=attack.eot * 2)
        acc = _accuracy(defense, more, data, protocol, whole, **kw)
        checks["more_budget"] = {
            "passed": _no_higher(acc, white_box, n),
            "accuracy": acc,
            "reference": white_box,
            "steps": more.steps,
            "eot": more.eot,
        }

    if name in NORM_BOUNDED and protocol == "whole-model" and isinstance(defense, DefendedModel):
        acc = _accuracy(defense, attack, data, "classifier-only", whole, **kw)
        checks["transfer"] = {"passed": _no_higher(white_box, acc, n), "accuracy": acc}
    else:
        checks["transfer"] = {"passed": None, "reason": "needs a whole-model run on a purifier"}

    if name in NORM_BOUNDED:
        square = AttackConfig(
            name="square" if norm == "linf" else "square-l2",
            eps=attack.eps,
            queries=square_queries,
            seed=attack.seed,
        )
        acc = _accuracy(defense, square, data, protocol, whole, **kw)
        checks["square"] = {"passed": _no_higher(white_box, acc, n), "accuracy": acc}
    else:
        checks["square"] = {"passed": None, "reason": f"{name} has no norm ball to match"}

    if name in BARE_CHECKED and isinstance(defense, DefendedModel) and defense.purifier is not None:
        bare_data = bare_data or data
        acc = _accuracy(defense.classifier, attack, bare_data, "whole-model", bare, **kw)
        checks["bare_classifier"] = {
            "passed": acc <= NEAR_ZERO,
            "accuracy": acc,
            "n": len(bare_data[0]),
        }
    else:
        reason = "needs a purifier and an attack that breaks undefended classifiers"
        checks["bare_classifier"] = {"passed": None, "reason": reason}
    return checks


def unreliable(checks: dict) -> bool | None:
    """True if any check failed, False if some ran and all passed, None if none applied."""
    verdicts = [c["passed"] for c in checks.values() if c["passed"] is not None]
    return None if not verdicts else not all(verdicts)
