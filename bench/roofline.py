"""roofline: the machine's measured matrix-multiply and 3x3-convolution throughput (GFLOP/s),
and every other benchmark's achieved GFLOP/s as a fraction of the convolution figure (`link`).
FLOPs are counted by PyTorch's FlopCounterMode (2 per multiply-add), so only matrix products
and convolutions count, not element-wise work. With `--amp` the peaks are measured in bf16 (the
precision the other benchmarks' networks then run in: a GPU's bf16 peak), else in float32."""

import torch
from torch import nn

from bench.harness import time_interleaved
from bench.workloads import BenchConfig

MATMUL_SIZES = (1024, 2048)
CONV_SHAPES = ((256, 64, 32), (64, 128, 32), (512, 32, 32), (64, 256, 16))  # batch, channels, side
KERNEL = 3
GFLOP = 1e9


def _matmul(n: int, device: torch.device, dtype: torch.dtype):
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return (lambda: a @ b), 2 * n**3


def _conv(shape: tuple[int, int, int], channels_last: bool, backward: bool, device, dtype):
    batch, ch, side = shape
    conv = nn.Conv2d(ch, ch, KERNEL, padding=KERNEL // 2, bias=False).to(device, dtype)
    conv.weight.requires_grad_(False)  # an attack's backward: input gradients only
    x = torch.randn(batch, ch, side, side, device=device, dtype=dtype)
    if channels_last:
        conv, x = (
            conv.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    flops = 2 * KERNEL * KERNEL * ch * ch * side * side * batch

    def forward() -> None:
        with torch.inference_mode():
            conv(x)

    def both() -> None:
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(conv(xg).sum(), xg)

    return (both if backward else forward), flops * (2 if backward else 1)


def run(cfg: BenchConfig, device: torch.device) -> dict:
    dtype = torch.bfloat16 if cfg.amp else torch.float32
    cases, flops = {}, {}
    for n in MATMUL_SIZES:
        cases[f"matmul {n}"], flops[f"matmul {n}"] = _matmul(n, device, dtype)
    for shape in CONV_SHAPES:
        for cl in (False, True):
            for bwd in (False, True):
                name = f"conv3x3 b{shape[0]} c{shape[1]} {shape[2]}px " + (
                    f"{'channels_last' if cl else 'nchw'} {'fwd+bwd-input' if bwd else 'fwd'}"
                )
                cases[name], flops[name] = _conv(shape, cl, bwd, device, dtype)
    timed = time_interleaved(cases, device, 2 * cfg.repeats, cfg.budget_s)
    rows = [
        {
            "case": k,
            "gflop": flops[k] / GFLOP,
            "gflop_per_s": round(flops[k] / t.best_s / GFLOP, 2),
        }
        for k, t in timed.items()
    ]

    def best(prefix: str, suffix: str) -> float:
        return max(
            r["gflop_per_s"]
            for r in rows
            if r["case"].startswith(prefix) and r["case"].endswith(suffix)
        )

    peaks = {
        "matmul": best("matmul", ""),
        "conv": best("conv", " fwd"),
        "conv_fwd_bwd": best("conv", "fwd+bwd-input"),
    }
    return {"rows": rows, "peak_gflop_per_s": peaks, "dtype": str(dtype).removeprefix("torch.")}


def link(roofline_result: dict, results: dict[str, dict]) -> None:
    """Add `fraction_of_conv_peak` to every row, of any benchmark, that has `gflop_per_s`."""
    peak = roofline_result["peak_gflop_per_s"]["conv"]
    for name, result in results.items():
        if name == "roofline":
            continue
        rows = [*result.get("rows", []), *result.get("ablation", {}).get("rows", [])]
        for row in rows:
            if row.get("gflop_per_s") is not None:
                row["fraction_of_conv_peak"] = round(row["gflop_per_s"] / peak, 3)
