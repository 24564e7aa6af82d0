"""Indicators of attack failure (Pintor et al., NeurIPS 2022), for every whole-model record.

Each indicator says whether it fired, the value it measured against its threshold, and, when it
fired, the fix. Those that show the reported accuracy is too high mark the record unreliable:
- silent success: images misclassified at some iterate (mean logits of the step's EOT draws)
  whose returned iterate is not, by the same reading: the attack found the point and lost it
  (for an attack that does not say what it returns, the judge's vote of the returned point
  stands in, which on a random defense also counts draws that disagree);
- unavailable gradients: zero or non-finite input gradients of the attack's loss;
- transfer failure: a transfer attack from the bare classifier beats the white-box attack (the
  sanity check `transfer`);
- unconstrained failure: 16 × ε does not drive accuracy to about 0 (the sanity check
  `large_eps`).
Two are warnings that the sanity check `more_budget` (twice the steps and EOT draws) settles:
- incomplete optimisation: the mean loss still rising over the last steps;
- unstable predictions: the loss varies across draws at the same point (EOT is needed), and the
  EOT mean of the attack's draws still varies by more than UNSTABLE_TOLERANCE of its size.
"""

import math

import torch
from torch import Tensor, nn

from atop_core.attacks import AttackConfig, bpda_loss, eot_loss
from atop_core.attacks.trace import untraced
from atop_core.defense import RandomDefense
from atop_core.harness import batch_seed, frozen

SILENT_SUCCESS_RATE = 0.02  # fires above 2% of the traced images
RISE_TOLERANCE = 0.02  # fires when the last fifth of the steps raised the mean loss by > 2%
UNSTABLE_TOLERANCE = 0.25  # the EOT mean's spread across draws, relative to the mean loss
PROBE_DRAWS = 16  # draws at each probed image for the loss's spread
INDICATORS = ("silent_success", "incomplete_optimisation", "unavailable_gradients")
INDICATORS += ("unstable_predictions", "transfer_failure", "unconstrained_failure")
MARKS_UNRELIABLE = ("silent_success", "unavailable_gradients", "transfer_failure")
MARKS_UNRELIABLE += ("unconstrained_failure",)


def _not_applicable(reason: str) -> dict:
    return {"fired": None, "reason": reason}


def _verdict(fired: bool, fix: str, **values: object) -> dict:
    return {"fired": fired, **values, **({"fix": fix} if fired else {})}


def mean_loss_curve(trace: dict) -> list[float]:
    """The per-step loss averaged over the traced batches."""
    batches = trace["loss"]
    steps = min(len(b) for b in batches)
    return [sum(b[s] for b in batches) / len(batches) for s in range(steps)]


def silent_success(trace: dict | None, vote_correct: list[bool]) -> dict:
    if not trace or not trace["fooled"]:
        return _not_applicable("the attack does not trace its iterates")
    kept = trace.get("returned_fooled")
    held = [not f for f in kept] if kept is not None else vote_correct
    lost = [f and h for f, h in zip(trace["fooled"], held, strict=True)]
    rate = sum(lost) / len(lost)
    fix = "return a misclassified iterate when one was found (not the last, nor the one of "
    fix += "highest cross-entropy), or ascend a margin loss"
    return _verdict(rate > SILENT_SUCCESS_RATE, fix, rate=rate, threshold=SILENT_SUCCESS_RATE)


def incomplete_optimisation(trace: dict | None, survivors: int) -> dict:
    if not trace or not trace["loss"]:
        return _not_applicable("the attack does not trace its loss")
    if not survivors:
        return _not_applicable("no image survives: nothing is left to optimise")
    curve = mean_loss_curve(trace)
    k = max(1, len(curve) // 5)
    if len(curve) < 2 * k:
        return _not_applicable(f"{len(curve)} step(s): no trend to read")
    before, last = sum(curve[-2 * k : -k]) / k, sum(curve[-k:]) / k
    rise = (last - before) / max(abs(before), 1e-12)
    fix = "more steps (the loss still rises); the more_budget check tells whether it matters"
    return _verdict(rise > RISE_TOLERANCE, fix, rise=rise, threshold=RISE_TOLERANCE)


def _probe_loss(attack: AttackConfig):
    return bpda_loss if attack.name == "bpda-eot" else eot_loss


def unavailable_gradients(
    target: nn.Module, attack: AttackConfig, x: Tensor, y: Tensor, draws: int
) -> dict:
    """The attack's loss differentiated at the clean images: zero or non-finite per image?"""
    point = x.detach().clone().requires_grad_(True)
    with untraced():
        loss = _probe_loss(attack)(target, point, y, draws)
        grad = None  # the loss does not depend on the input at all
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, point, allow_unused=True)
    flat = torch.zeros_like(point) if grad is None else grad
    flat = flat.flatten(1)
    broken = (~torch.isfinite(flat).all(1)) | (flat.abs().sum(1) == 0)
    rate = broken.float().mean().item()
    fix = "the gradient is cut (zero or NaN): BPDA for a non-differentiable stage, or find what "
    fix += "detaches it"
    return _verdict(rate > 0, fix, rate=rate)


@torch.no_grad()
def unstable_predictions(defense: nn.Module, x: Tensor, y: Tensor, eot: int) -> dict:
    """The loss's spread over PROBE_DRAWS draws at each image, and that of an `eot`-draw mean."""
    if not isinstance(defense, RandomDefense) or defense.one_draw:
        return _verdict(False, "", variation=0.0, eot=eot)
    with untraced():
        logits = defense.draw_logits(x, PROBE_DRAWS).float()
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), y.repeat(PROBE_DRAWS), reduction="none"
    ).view(PROBE_DRAWS, -1)
    variation = (ce.std(0).mean() / ce.mean().clamp(min=1e-12)).item()
    of_mean = variation / math.sqrt(eot)
    needed = math.ceil((variation / UNSTABLE_TOLERANCE) ** 2)
    fix = f"EOT with at least {needed} draws per gradient (the attack used {eot})"
    return _verdict(
        of_mean > UNSTABLE_TOLERANCE,
        fix,
        variation=variation,
        eot=eot,
        eot_mean_variation=of_mean,
        threshold=UNSTABLE_TOLERANCE,
    )


def _from_check(check: dict | None, fix: str) -> dict:
    if not check or check.get("passed") is None:
        return _not_applicable((check or {}).get("reason", "the sanity check did not run"))
    return _verdict(not check["passed"], fix, **{k: v for k, v in check.items() if k != "passed"})


def trace_indicators(record: dict) -> dict:
    """The indicators read from a record's own trace and outcomes."""
    trace = record.get("trace")
    draws = record["draws"]
    vote = [c > draws / 2 for c in record["per_sample"]["correct_draws"]]
    return {
        "silent_success": silent_success(trace, vote),
        "incomplete_optimisation": incomplete_optimisation(trace, sum(vote)),
    }


def attack_indicators(
    record: dict,
    target: nn.Module,
    judged: nn.Module,
    attack: AttackConfig,
    x: Tensor,
    y: Tensor,
    checks: dict,
    *,
    seed: int = 0,
) -> dict:
    """Every indicator for one record: `target` is what the attack differentiated, `judged` the
    defense, (x, y) the probed images ([0,1]), `checks` the record's sanity checks."""
    if attack.name == "clean":
        return {name: _not_applicable("clean accuracy is not an attack") for name in INDICATORS}
    frozen_run = record.get("randomness") == "frozen"
    if isinstance(judged, RandomDefense):
        judged.reseed(batch_seed(seed, 0))
    with frozen(judged, frozen_run):
        out = trace_indicators(record)
        out["unavailable_gradients"] = unavailable_gradients(target, attack, x, y, attack.eot or 1)
        out["unstable_predictions"] = unstable_predictions(judged, x, y, attack.eot or 1)
    out["transfer_failure"] = _from_check(
        checks.get("transfer"),
        "the white-box gradient is weaker than the bare classifier's: check the gradient "
        "through the purifier, or add EOT draws",
    )
    out["unconstrained_failure"] = _from_check(
        checks.get("large_eps"),
        "a huge budget must break any defense: the attack is not optimising the defense "
        "(masked gradients, or too few steps)",
    )
    return out


def fired(indicators: dict) -> list[str]:
    return [name for name, v in indicators.items() if v.get("fired")]


def marks_unreliable(indicators: dict) -> bool:
    return any(name in MARKS_UNRELIABLE for name in fired(indicators))
