"""eval: images per second of full-gradient PGD-EOT through the defended model (GAN and AE
purifiers, quick and paper architectures), our way; plus an ablation that takes the engineering
apart one change at a time (looped vs batched EOT at K=8, layout, pass size, torch.compile), the
forward-only judging pass (no_grad vs inference_mode) and the thread count."""

import dataclasses
from dataclasses import dataclass

import torch

from atop_core.attacks import EOT_PASS
from bench.harness import Timed, count_flops, load_average, time_interleaved
from bench.workloads import (
    AUTHORS_BATCH,
    BenchConfig,
    Style,
    arch,
    attack_runner,
    build_defense,
    ours,
    synthetic_images,
    variant,
)

JUDGE_DRAWS = 5  # draws per image in the judging benchmark (the profiles judge 10)
GFLOP = 1e9


@dataclass(frozen=True)
class Work:
    """One timed call: PGD-EOT in `style` over `images` images, `steps` steps, `eot` draws."""

    style: Style
    images: int
    steps: int
    eot: int


def eot_pass_name(s: Style) -> str:
    if not s.eot_batched:
        return "looped"
    return "one" if s.pass_size is None else f"passes of {s.pass_size}"


def describe(a: str, kind: str, w: Work) -> dict:
    s = w.style
    return {
        "arch": a,
        "purifier": kind,
        "style": s.name,
        "layout": "channels_last" if s.channels_last else "nchw",
        "eot_pass": eot_pass_name(s),
        "masks": "per-sample" if s.per_sample else "per-batch",
        "work_size": s.work_size or 32,
        "batch": min(s.batch, w.images),
        "compiled": s.compiled,
        "images": w.images,
        "steps": w.steps,
        "eot": w.eot,
    }


def rate_row(timed: Timed, work: dict, flops_per_ids: float, ref_steps: int, ref_eot: int) -> dict:
    """A result row: image-draw-steps per second (one forward and backward of one image through
    one transform draw), images per second at the reference (steps, eot), and GFLOP/s."""
    ids = work["images"] * work["steps"] * work["eot"]
    ids_per_s = ids / timed.best_s
    return {
        **work,
        "seconds": [round(s, 4) for s in timed.seconds],
        "warmup_s": round(timed.warmup_s, 2),
        "image_draw_steps_per_s": round(ids_per_s, 3),
        "image_draw_steps_per_s_median": round(ids / timed.median_s, 3),
        "images_per_s": round(ids_per_s / (ref_steps * ref_eot), 4),
        "gflop_per_image_draw_step": round(flops_per_ids / GFLOP, 4),
        "gflop_per_s": round(ids_per_s * flops_per_ids / GFLOP, 2),
        "load_average": [timed.load_before, timed.load_after],
    }


def flops_per_ids(cfg: BenchConfig, a: str, kind: str, style: Style, device) -> float:
    """FLOPs of one image-draw-step, counted eagerly on one image (one step, one draw)."""
    eager = dataclasses.replace(style, compiled=False)
    model = build_defense(arch(a), kind, eager, device, cfg.seed)
    x, y = synthetic_images(1, device, cfg.seed)
    return float(count_flops(lambda: attack_runner(model, eager, x, y)(1, 1)))


def measure_group(
    cfg: BenchConfig,
    a: str,
    kind: str,
    works: dict[str, Work],
    device: torch.device,
    min_rounds: int = 1,
) -> dict[str, dict]:
    """Time every work in interleaved rounds (warm-up: one step, the same shapes), so works
    that will be compared saw the same load; rows keyed like `works`."""
    runs, warm = {}, {}
    for name, w in works.items():
        model = build_defense(arch(a), kind, w.style, device, cfg.seed)
        x, y = synthetic_images(w.images, device, cfg.seed)
        run = attack_runner(model, w.style, x, y, cfg.amp)
        runs[name] = lambda run=run, w=w: run(w.steps, w.eot)
        warm[name] = lambda run=run, w=w: run(1, w.eot if w.style.eot_batched else 1)
    timed = time_interleaved(runs, device, cfg.repeats, cfg.budget_s, warm, min_rounds)
    flops = {}
    for w in works.values():
        if w.style.work_size not in flops:
            flops[w.style.work_size] = flops_per_ids(cfg, a, kind, w.style, device)
    return {
        name: rate_row(
            timed[name], describe(a, kind, w), flops[w.style.work_size], cfg.steps, cfg.eot
        )
        for name, w in works.items()
    }


def ablation_works(cfg: BenchConfig) -> dict[str, Work]:
    """From the authors' looped EOT to ours, one change at a time, on the same images at the same
    resolution with per-sample masks: at their batch of 8 and at our batch."""
    b, n, k = cfg.batch, max(cfg.batch, AUTHORS_BATCH), cfg.eot_ablation
    styles = [
        variant(f"b{AUTHORS_BATCH} looped, nchw", AUTHORS_BATCH, looped=True, channels_last=False),
        variant(
            f"b{AUTHORS_BATCH} batched, nchw", AUTHORS_BATCH, looped=False, channels_last=False
        ),
        variant(
            f"b{AUTHORS_BATCH} batched, channels_last",
            AUTHORS_BATCH,
            looped=False,
            channels_last=True,
        ),
        variant(f"b{b} looped, channels_last", b, looped=True, channels_last=True),
        variant(
            f"b{b} batched one pass, channels_last",
            b,
            looped=False,
            channels_last=True,
            pass_size=None,
        ),
        variant(
            f"b{b} batched passes of {EOT_PASS}, channels_last", b, looped=False, channels_last=True
        ),
    ]
    if cfg.compile:
        styles.append(
            variant(
                f"b{b} batched one pass, channels_last, compiled",
                b,
                looped=False,
                channels_last=True,
                compiled=True,
                pass_size=None,
            )
        )
    return {s.name: Work(s, n, 1, k) for s in styles}


def measure_ablation(cfg: BenchConfig, device: torch.device) -> dict:
    works = ablation_works(cfg)
    rows = measure_group(cfg, "quick", cfg.purifiers[0], works, device, min_rounds=2)
    rate = {name: row["image_draw_steps_per_s"] for name, row in rows.items()}
    b8, b = f"b{AUTHORS_BATCH}", f"b{cfg.batch}"
    speedups = {
        f"batched_vs_looped_{b8}": rate[f"{b8} batched, nchw"] / rate[f"{b8} looped, nchw"],
        f"channels_last_vs_nchw_{b8}": rate[f"{b8} batched, channels_last"]
        / rate[f"{b8} batched, nchw"],
        f"batched_vs_looped_{b}": rate[f"{b} batched one pass, channels_last"]
        / rate[f"{b} looped, channels_last"],
        f"passes_vs_looped_{b}": rate[f"{b} batched passes of {EOT_PASS}, channels_last"]
        / rate[f"{b} looped, channels_last"],
        f"passes_vs_one_pass_{b}": rate[f"{b} batched passes of {EOT_PASS}, channels_last"]
        / rate[f"{b} batched one pass, channels_last"],
    }
    if cfg.compile:
        speedups["compiled_vs_eager"] = (
            rate[f"{b} batched one pass, channels_last, compiled"]
            / rate[f"{b} batched one pass, channels_last"]
        )
    return {
        "eot": cfg.eot_ablation,
        "rows": [{"variant": name, **row} for name, row in rows.items()],
        "speedups": {name: round(v, 3) for name, v in speedups.items()},
    }


def compiled_gradient_gap(cfg: BenchConfig, device: torch.device) -> dict:
    """How far torch.compile moves the gradient of the EOT loss with respect to the transformed
    copies (same weights, same draws: the transform runs once, eagerly), beside how far float32
    itself is from float64: random deep nets amplify rounding, so the second is the tolerance
    the first should be judged by."""
    x, y = synthetic_images(cfg.batch, device, cfg.seed)
    kind, k = cfg.purifiers[0], cfg.eot
    eager = build_defense(arch("quick"), kind, ours(cfg.batch), device, cfg.seed)
    copies, keep = eager.transform(x.repeat(k, 1, 1, 1))
    grads = {}
    for name, compiled, dtype in (
        ("eager", False, torch.float32),
        ("compiled", True, torch.float32),
        ("float64", False, torch.float64),
    ):
        model = build_defense(arch("quick"), kind, ours(cfg.batch, compiled=compiled), device)
        model = model.to(dtype)
        c = copies.to(dtype).requires_grad_(True)
        kept = keep.to(dtype)
        logits = model.classifier(model.transform.combine(model.purifier(c, kept), kept))
        loss = torch.nn.functional.cross_entropy(logits, y.repeat(k), reduction="sum")
        grads[name] = torch.autograd.grad(loss, c)[0].double()
    ref = grads["float64"]
    return {
        "max_abs_grad": ref.abs().max().item(),
        "compiled_vs_eager": (grads["compiled"] - grads["eager"]).abs().max().item(),
        "eager_vs_float64": (grads["eager"] - ref).abs().max().item(),
        "compiled_vs_float64": (grads["compiled"] - ref).abs().max().item(),
        "sign_agreement_compiled_eager": (grads["compiled"].sign() == grads["eager"].sign())
        .float()
        .mean()
        .item(),
    }


def measure_judge(cfg: BenchConfig, device: torch.device) -> dict:
    """Images per second of judging (JUDGE_DRAWS forward draws, no gradient): the library's
    no_grad against inference_mode, on the quick architecture in channels_last."""
    from atop_core.harness import judge

    model = build_defense(arch("quick"), cfg.purifiers[0], ours(cfg.batch), device, cfg.seed)
    x, y = synthetic_images(cfg.batch, device, cfg.seed)
    x = x.contiguous(memory_format=torch.channels_last)

    def inference() -> None:
        with torch.inference_mode():
            judge(model, x, y, JUDGE_DRAWS)

    runs = {"no_grad": lambda: judge(model, x, y, JUDGE_DRAWS), "inference_mode": inference}
    timed = time_interleaved(runs, device, 2 * cfg.repeats, cfg.budget_s)
    rates = {k: round(cfg.batch / t.best_s, 2) for k, t in timed.items()}
    return {
        "draws": JUDGE_DRAWS,
        "images_per_s": rates,
        "inference_vs_no_grad": round(rates["inference_mode"] / rates["no_grad"], 3),
    }


THREAD_SETTINGS = {  # name -> (torch threads, extra environment)
    "1 thread": (1, {}),
    "one per core, spin": (0, {"OMP_WAIT_POLICY": "ACTIVE"}),
    "one per core, passive": (0, {"OMP_WAIT_POLICY": "PASSIVE"}),
}
THREAD_STYLES = ("ours", "theirs-native")


def measure_threads(cfg: BenchConfig, device: torch.device) -> dict | None:
    """Our attack and the authors' structure (quick nets, 32 px) in fresh processes with 1
    thread, and one per core with OpenMP's threads spinning or sleeping (passive) between
    parallel regions: spinning wins on an idle machine and loses badly when another job shares
    the cores. The fastest of `repeats` calls, over two interleaved rounds of processes."""
    from bench.memory import run_probe

    if device.type != "cpu":
        return None
    spec = {"kind": "speed", "purifier": cfg.purifiers[0], "images": 32, "eot": cfg.eot}
    spec["repeats"] = 2
    keys = [(s, n) for s in THREAD_STYLES for n in THREAD_SETTINGS]
    rates: dict[tuple, list[float]] = {key: [] for key in keys}
    failures, load_before = {}, load_average()
    for _ in range(2):
        for style, name in keys:
            threads, env = THREAD_SETTINGS[name]
            out = run_probe({**spec, "style": style, "threads": threads}, env)
            if "failed" in out:
                failures[f"{style}, {name}"] = out["reason"]
            else:
                rates[style, name].append(out["image_draw_steps_per_s"])
    table = {s: {n: max(rates[s, n], default=None) for n in THREAD_SETTINGS} for s in THREAD_STYLES}
    return {
        "image_draw_steps_per_s": table,
        "failures": failures,
        "load_average": [load_before, load_average()],
    }


def run(cfg: BenchConfig, device: torch.device) -> dict:
    rows = []
    for a in cfg.archs:
        for kind in cfg.purifiers:
            works = {"ours": Work(ours(cfg.batch), cfg.n_images(a), cfg.steps, cfg.eot)}
            if cfg.compile:
                style = ours(cfg.batch, compiled=True)
                works["compiled"] = Work(style, cfg.n_images(a), cfg.steps, cfg.eot)
            rows += measure_group(cfg, a, kind, works, device).values()
    result = {"rows": rows, "ablation": measure_ablation(cfg, device)}
    result["judge"] = measure_judge(cfg, device)
    result["threads"] = measure_threads(cfg, device)
    if cfg.compile:
        result["compiled_gradient_gap"] = compiled_gradient_gap(cfg, device)
    return result
