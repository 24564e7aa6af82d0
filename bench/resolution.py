"""ImageNette's working resolution at the quick profile: the quick classifier trained on the local
5,000 training images shrunk to 32, 48 and 64 px (EPOCHS epochs, the quick recipe otherwise), its
accuracy on the 512 fixed evaluation images and its training seconds. Every later stage (purifier,
attacks, judging) costs in proportion to the pixels, so the classifier's accuracy is what a larger
size buys. Trains in a temporary ATOP_HOME (nothing is kept); about 11 minutes on 2 CPU cores,
so it runs only when named: `python -m bench resolution`."""

import tempfile
import time
from pathlib import Path

import torch

from atop_core.config import get_profile, overridden, with_fields
from atop_core.pipeline import get_classifier, load_bundle
from atop_core.train import accuracy
from bench.workloads import BenchConfig

DATASET = "imagenette"
SIZES = (32, 48, 64)
EPOCHS = 12


def run(cfg: BenchConfig, device: torch.device) -> dict:
    quick = get_profile("quick")
    rows = []
    for size in SIZES:
        profile = with_fields(
            quick,
            per_dataset={},
            data=with_fields(quick.data, max_size=size),
            classifier=with_fields(quick.classifier, epochs=EPOCHS),
        )
        with tempfile.TemporaryDirectory() as home, overridden(home=Path(home)):
            data = load_bundle(profile, DATASET)
            start = time.perf_counter()
            model = get_classifier(profile, data, device)
            train_s = time.perf_counter() - start
            acc = accuracy(model, data.eval.images, data.eval.labels, device)
        rows.append(
            {
                "size": size,
                "pixels_vs_32": (size / 32) ** 2,
                "epochs": EPOCHS,
                "train_images": len(data.train),
                "eval_images": len(data.eval.labels),
                "train_s": round(train_s, 1),
                "accuracy": round(acc, 4),
            }
        )
    return {"rows": rows, "dataset": DATASET}
