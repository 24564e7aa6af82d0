"""bench/precision.py's arithmetic: the benchmark itself runs outside the test suite."""

import torch

from bench.precision import agreement, fidelity_row, trained_defenses
from bench.workloads import BenchConfig
from tests.conftest import save_tiny_defense


def test_agreement_is_one_for_equal_gradients_and_ignores_pixels_zero_in_both():
    g = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    g[:, :, :2] = 0  # masked pixels: no gradient in either
    assert agreement(g, g.clone(), "x") == {"x_cosine": 1.0, "x_sign_agreement": 1.0}
    assert agreement(-g, g, "x") == {"x_cosine": -1.0, "x_sign_agreement": 0.0}


def test_fidelity_compares_bf16_with_float32_on_trained_defenses_found_by_default(tmp_path):
    path = tmp_path / "home" / "checkpoints" / "quick" / "cifar10" / "defense-ae-rt2-atop.pt"
    path.parent.mkdir(parents=True)
    save_tiny_defense(path)
    cfg = BenchConfig(archs=("quick", "paper"), purifiers=("gan", "ae"), eot=2)
    assert trained_defenses(cfg) == [path]  # the paper's and the GAN's are not there
    row = fidelity_row(cfg, path, torch.device("cpu"))
    assert row["bf16_cosine"] > 0.9 and -1 <= row["draws_cosine"] <= 1
