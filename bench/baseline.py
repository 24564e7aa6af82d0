"""baseline: the same PGD-EOT the authors' way (batches of 8, one mask per batch, EOT as a Python
loop, transform and purifier at 256x256), at 256 px and at native 32 px, timed in interleaved
rounds with ours, so the speed-up splits into the effect of resolution (theirs at 32 vs theirs at
256) and of engineering (ours vs theirs, both at 32) under the same load. With `eval` in the same
invocation, eval's rows get `ratio_vs_baseline` (`link`)."""

import torch

from bench.evaluation import Work, measure_group
from bench.workloads import AUTHORS_SIZE, BenchConfig, ours, theirs


def baseline_works(cfg: BenchConfig, a: str) -> dict[str, Work]:
    n = cfg.n_images(a)
    return {
        "ours": Work(ours(cfg.batch), n, cfg.steps, cfg.eot),
        "theirs-native": Work(theirs(work_size=0), n, cfg.steps, cfg.eot),
        "theirs-256": Work(theirs(AUTHORS_SIZE), cfg.images_256, cfg.steps_256, cfg.eot_256),
    }


def run(cfg: BenchConfig, device: torch.device) -> dict:
    rows = []
    for a in cfg.archs:
        for kind in cfg.purifiers:
            group = measure_group(cfg, a, kind, baseline_works(cfg, a), device, min_rounds=2)
            rows += [{**row, "reference": name == "ours"} for name, row in group.items()]
    return {"rows": rows, "effects": effects(rows, rows)}


def _rate(rows: list[dict], a: str, kind: str, style: str) -> float | None:
    found = [
        r["images_per_s"]
        for r in rows
        if (r["arch"], r["purifier"], r["style"], r["compiled"]) == (a, kind, style, False)
    ]
    return found[0] if found else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 2) if num and den else None


def effects(theirs_rows: list[dict], ours_rows: list[dict]) -> list[dict]:
    """Per (arch, purifier): resolution = theirs@32 / theirs@256; engineering = ours / theirs@32;
    total = ours / theirs@256 = resolution x engineering (rates per image, equal steps and EOT)."""
    keys = sorted({(r["arch"], r["purifier"]) for r in theirs_rows})
    out = []
    for a, kind in keys:
        t256 = _rate(theirs_rows, a, kind, "theirs-256")
        t32 = _rate(theirs_rows, a, kind, "theirs-native")
        mine = _rate(ours_rows, a, kind, "ours")
        out.append(
            {
                "arch": a,
                "purifier": kind,
                "resolution": _ratio(t32, t256),
                "engineering": _ratio(mine, t32),
                "total": _ratio(mine, t256),
            }
        )
    return out


def link(eval_result: dict, baseline_result: dict) -> None:
    """eval's rows get `ratio_vs_baseline` against this run's authors'-structure rates (in place):
    equal_work against theirs at 256 px, equal_resolution against theirs at 32 px."""
    theirs_rows = baseline_result["rows"]
    for row in eval_result["rows"]:
        a, kind, rate = row["arch"], row["purifier"], row["images_per_s"]
        row["ratio_vs_baseline"] = {
            "equal_work": _ratio(rate, _rate(theirs_rows, a, kind, "theirs-256")),
            "equal_resolution": _ratio(rate, _rate(theirs_rows, a, kind, "theirs-native")),
        }
