"""memory: peak resident memory of each benchmark's workload and of the quick profile, each
measured in a fresh process (`bench.probe`), so one workload's peak cannot hide another's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from atop_core.attacks import EOT_PASS
from bench.workloads import AUTHORS_BATCH, BenchConfig

ROOT = Path(__file__).resolve().parent.parent
PAPER_EVAL = {"batch": 64, "eot": 20}  # the paper profile's EvalConfig: batch 64 x EOT 20
TIMEOUT_S = 900


def probe_specs(cfg: BenchConfig, device: torch.device) -> list[dict]:
    specs = []
    for a in cfg.archs:
        for kind in cfg.purifiers:
            common = {"arch": a, "purifier": kind, "device": str(device)}
            n = min(cfg.batch, cfg.n_images(a))
            specs += [
                {"kind": "attack", "style": "ours", "images": n, "eot": cfg.eot, **common},
                {
                    "kind": "attack",
                    "style": "theirs-256",
                    "images": AUTHORS_BATCH,
                    "eot": 1,
                    **common,
                },
                {"kind": "finetune", **common},
            ]
    big = {"kind": "attack", "style": "ours", "arch": "quick", "purifier": cfg.purifiers[0]}
    big |= {"images": PAPER_EVAL["batch"], "eot": PAPER_EVAL["eot"], "device": str(device)}
    specs += [{**big, "pass_size": EOT_PASS}, {**big, "pass_size": None}]
    if device.type == "cpu":
        specs.append({"kind": "quick-profile"})
    return specs


def run_probe(spec: dict, env: dict[str, str] | None = None) -> dict:
    """The probe's JSON line, or `failed` with the reason (the run goes on to the next one);
    `env` adds environment variables (read by OpenMP when torch loads)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.probe", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        return {"failed": True, "reason": out.stderr.strip()[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg: BenchConfig, device: torch.device) -> dict:
    rows = [{**spec, **run_probe(spec)} for spec in probe_specs(cfg, device)]
    return {"rows": rows}
