import torch

from bench import flip
from bench.workloads import BenchConfig


def test_the_flip_benchmark_times_both_classifiers_and_counts_the_mirror_view_twice():
    cfg = BenchConfig(
        purifiers=("ae",), steps=1, eot=1, repeats=1, budget_s=0.0, images={"quick": 2}
    )
    rows = flip.run(cfg, torch.device("cpu"))["rows"]
    assert [(r["purifier"], r["flip_average"]) for r in rows] == [("ae", False), ("ae", True)]
    plain, flipped = rows
    assert all(r["images"] == 2 and r["image_draw_steps_per_s"] > 0 for r in rows)
    purifier_gflop = plain["gflop_per_image_draw_step"] * (1 - plain["classifier_share"])
    classifier_gflop = plain["gflop_per_image_draw_step"] * plain["classifier_share"]
    # the mirror view doubles the classifier's arithmetic and leaves the purifier's alone
    expected = purifier_gflop + 2 * classifier_gflop
    assert abs(flipped["gflop_per_image_draw_step"] - expected) < 0.01 * expected
    assert flipped["slowdown"] > 0
