"""What the figures show, computed without drawing (plots.py draws it).

- `mix_number_analysis`: the authors' "impact of missing rate and mix number" quantities
  (docs/paper.md), on our block masks by default.
- `rt_stages`: one draw of t, g and the combination, stage by stage (the paper's Figure 2).
- `purify_examples`: clean, adversarial and purified images with the classifier's predictions.
- `readings_frame`: evaluation records as one long table, one row per record and reading.
- `attack_strength`: full-gradient PGD-EOT beside BPDA+EOT and classifier-only PGD, per defense.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from torch import Tensor, nn

from atop_core.config import EPS_LINF, PROFILES, SEED_STRIDE, TransformConfig
from atop_core.defense import DefendedModel
from atop_core.nets.purifiers import resize_to, to_work_size
from atop_core.tables import EPS_TOL, READINGS, records_frame
from atop_core.transforms import RandomTransform, block_mask

SCALE = 100.0  # the authors' plot: Z = 100 × mean |Δ| on the [0,1] pixel scale
MIX_COLUMNS = ("missing_rate", "mix_number", "masked_perturbation", "noise_residual")
MIX_COLUMNS += ("noise_std", "grid", "n")


def _mix(images: Tensor, keep: Tensor) -> Tensor:
    """The mean of M masked copies: (M, n, C, H, W) images (or one (n, C, H, W) image broadcast
    to every copy) and (M, n, 1, H, W) keep-masks -> (n, C, H, W). Missing pixels count as 0."""
    return (images * keep).mean(0)


def mix_number_analysis(
    clean: Tensor,
    adv: Tensor,
    missing_rates: Sequence[float],
    mix_numbers: Sequence[int],
    noise_std: float,
    grid: int,
    seed: int = 0,
) -> pd.DataFrame:
    """How much of an adversarial perturbation survives masking, against how much noise survives
    averaging, per (missing rate r, mix number M); one row per pair, columns `MIX_COLUMNS`.

    For each pair, M keep-masks m_j (exactly round(r·grid²) of the grid's blocks missing, drawn per
    sample) and M Gaussian noises n_j are drawn, and mix(z_j) = (1/M) Σ_j m_j ⊙ z_j:
    - masked_perturbation (the authors' quantity i) = 100 · mean |mix(x') − mix(x)|: the
      perturbation the masked copies still carry (noise-free, so it is 0 when x' = x);
    - noise_residual (quantity ii) = 100 · mean |mix(clip(x' + σ·n_j)) − mix(x')|: the noise left
      after averaging M noisy masked copies, which falls as M grows.
    The authors' notebook drew per-pixel masks with σ = 2/255: pass
    grid = image side for per-pixel masks. Masks are drawn from `seed`, noise from its own stream;
    every pair restarts both, so two missing rates with the same M share their draws (the missing
    blocks at a higher rate include those at a lower one) and the rows are comparable.
    Images: (n, C, H, W) in [0, 1], square; computed on the CPU.
    """
    if clean.shape != adv.shape:
        raise ValueError(f"clean and adv must have one shape, got {clean.shape} and {adv.shape}")
    clean, adv = clean.detach().float().cpu(), adv.detach().float().cpu()
    n, _, size, _ = clean.shape
    rows = []
    for m in mix_numbers:
        for rate in missing_rates:
            masks = torch.Generator().manual_seed(seed)
            noise = torch.Generator().manual_seed(seed + SEED_STRIDE)
            keep = block_mask(m * n, size, grid, rate, masks).view(m, n, 1, size, size)
            noisy = (adv + noise_std * torch.randn((m, *adv.shape), generator=noise)).clamp(0, 1)
            mixed_adv = _mix(adv, keep)
            perturbation = (mixed_adv - _mix(clean, keep)).abs().mean().item()
            residual = (_mix(noisy, keep) - mixed_adv).abs().mean().item()
            rows.append(
                (float(rate), int(m), SCALE * perturbation, SCALE * residual, noise_std, grid, n)
            )
    return pd.DataFrame(rows, columns=list(MIX_COLUMNS))


@dataclass(frozen=True)
class TransformStages:
    """One draw of x ↦ g(t(x)), stage by stage, at the purifier's working size (the input's
    size unless the purifier has a `work_size`). Per-copy tensors are (K, B, ...), K copies."""

    kind: str
    input: Tensor  # (B, C, H, W)
    noisy: Tensor  # (B, C, H, W): after the noise, before any mask (the input itself for RT1)
    keep: Tensor  # (K, B, 1, H, W): 1 kept, 0 missing
    copies: Tensor  # (K, B, C, H, W): the masked copies t_i(x) the purifier sees
    filled: Tensor  # (K, B, C, H, W): the purifier's outputs g(t_i(x))
    combined: Tensor  # (B, C, H, W): x̂, the image the classifier sees


@torch.no_grad()
def rt_stages(
    purifier: nn.Module | None, cfg: TransformConfig, x: Tensor, seed: int = 0
) -> TransformStages:
    """Every intermediate image of one draw of `cfg`'s transform (seeded by `seed`) and the
    purifier on [0,1] images x, combined by `RandomTransform.combine`. The noisy image is the
    same draw re-made with nothing masked: the transform draws its noise before its masks."""
    x = to_work_size(x, purifier)
    t = RandomTransform(cfg, seed)
    copies, keep = t(x)
    filled = copies if purifier is None else purifier(copies, keep)
    combined = t.combine(filled, keep)
    noisy = x.clone()
    if cfg.kind in ("rt2", "rt3") and cfg.noise_std > 0:
        unmasked = replace(cfg, kind="rt2", missing_rate=0.0)
        noisy = RandomTransform(unmasked, seed)(x)[0]
    k, shape = t.copies, x.shape
    return TransformStages(
        kind=cfg.kind,
        input=x.clone(),
        noisy=noisy,
        keep=keep.view(k, shape[0], 1, *shape[2:]),
        copies=copies.view(k, *shape),
        filled=filled.view(k, *shape),
        combined=combined,
    )


@torch.no_grad()
def purify_examples(
    defense: DefendedModel, x: Tensor, x_adv: Tensor, seed: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Images {clean, adversarial, purified clean, purified adversarial} and the frozen
    classifier's predicted class for each (B,). Both inputs are purified with the same draw of
    the transform (as the authors paired them), so their difference is the perturbation's alone.
    The defense's own transform stream is left untouched."""
    cfg = defense.transform.cfg
    size = x.shape[-2:]
    images = {
        "clean": x,
        "adversarial": x_adv,
        "purified clean": resize_to(rt_stages(defense.purifier, cfg, x, seed).combined, size),
        "purified adversarial": resize_to(
            rt_stages(defense.purifier, cfg, x_adv, seed).combined, size
        ),
    }
    predictions = {k: defense.classifier(v).argmax(1) for k, v in images.items()}
    return images, predictions


def readings_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Evaluation records as a long table for the budget figures: `tables.records_frame`'s rows,
    one per record and reading (single, vote, worst) with its `accuracy`, `lo` and `hi`, and ε in
    1/255 units. Clean accuracy sits at ε = 0 with no steps or EOT (its record still carries the
    config's defaults, which would put it at 8/255)."""
    wide = records_frame(list(records))
    clean = wide["attack"] == "clean"
    wide["eps"] = wide["eps"].where(~clean, 0.0)
    wide["steps"] = wide["steps"].where(~clean, 0)
    wide["eot"] = wide["eot"].where(~clean, None)
    wide["eps_255"] = (wide["eps"].astype(float) * 255).round(3)
    wide["unreliable"] = wide["unreliable"].fillna(False).astype(bool)
    keep = ["defense", "dataset", "profile", "protocol", "attack", "eps", "eps_255", "steps"]
    keep += ["eot", "draws", "n", "unreliable"]
    rows = [
        wide[keep].assign(reading=k, accuracy=wide[k], lo=wide[f"{k}_lo"], hi=wide[f"{k}_hi"])
        for k in READINGS
    ]
    long = pd.concat(rows)  # keeps each record's row label: sort back to record by record
    return long.sort_index(kind="stable").reset_index(drop=True)


ADAPTIVE = "full-gradient PGD-EOT"
STRENGTH_COLUMNS = {  # (attack, protocol) -> column, the adaptive attack first
    ("pgd-eot", "whole-model"): ADAPTIVE,
    ("bpda-eot", "whole-model"): "BPDA+EOT",
    ("pgd", "classifier-only"): "classifier-only PGD",
}


def attack_strength(frame: pd.DataFrame) -> pd.DataFrame:
    """Per purified defense and image list, single-draw accuracy (%, Wilson 95%) under
    full-gradient PGD-EOT, BPDA+EOT and classifier-only PGD at the profile's steps, EOT and
    ε = 8/255 (a `tables.records_frame`), and whether the full-gradient attack is the strongest:
    `yes`, `within the intervals` (another is lower, but inside its interval), or `no`."""
    rows = []
    for (dataset, profile, defense, _), group in frame.groupby(
        ["dataset", "profile", "defense", "indices"], sort=True, dropna=False
    ):
        if profile not in PROFILES:  # the budget to compare at is the profile's
            continue
        budget, cells = PROFILES[profile].evaluation, {}
        for r in group.itertuples():
            column = STRENGTH_COLUMNS.get((r.attack, r.protocol))
            if column is None or not r.complete or r.purifier == "none" or r.randomness != "fresh":
                continue
            if r.steps != budget.steps or abs(float(r.eps) - EPS_LINF) > EPS_TOL:
                continue
            if r.protocol == "whole-model" and r.eot != budget.eot:
                continue
            cells[column] = r
        if len(cells) < len(STRENGTH_COLUMNS):
            continue
        full = cells[ADAPTIVE]
        others = [r for c, r in cells.items() if c != ADAPTIVE]
        verdict = "yes"
        if any(r.single < full.single for r in others):
            verdict = (
                "within the intervals" if all(full.single_lo <= r.single for r in others) else "no"
            )
        row = {"dataset": dataset, "defense": defense, "n": full.n, "steps": int(full.steps)}
        row |= {"eot": int(full.eot), "profile": profile}
        row |= {
            c: f"{100 * r.single:.1f} [{100 * r.single_lo:.1f}, {100 * r.single_hi:.1f}]"
            for c, r in cells.items()
        }
        rows.append(row | {"full gradient strongest": verdict})
    columns = ["dataset", "defense", "profile", "n", "steps", "eot", *STRENGTH_COLUMNS.values()]
    return pd.DataFrame(rows, columns=[*columns, "full gradient strongest"])
