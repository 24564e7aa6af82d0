"""Classifiers: every registered net maps [0, 1] images to logits; checkpoints load or explain."""

import pytest
import torch
from torch import nn

from atop_core.nets.classifiers import (
    CLASSIFIERS,
    Classifier,
    build_classifier,
    count_parameters,
    load_external_state_dict,
)

BIG = {"wrn-70-16"}  # ~267M parameters: several seconds to build and run on 2 CPU cores


def _shape_cases() -> list:
    """Both stems for the ResNets, a second size for the small net, 32×32 alone for the WRNs."""
    cases = []
    for arch in sorted(CLASSIFIERS):
        sizes = {"small": (32, 64)}.get(arch, (32, 128) if arch.startswith("resnet") else (32,))
        marks = [pytest.mark.slow] if arch in BIG else []
        cases += [pytest.param(arch, s, marks=marks, id=f"{arch}-{s}") for s in sizes]
    return cases


@pytest.fixture
def small_pair() -> tuple[Classifier, Classifier]:
    """Two small nets with different weights, so identical outputs after a load mean it worked."""
    torch.manual_seed(0)
    source = build_classifier("small", 10, 32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)).eval()
    target = build_classifier("small", 10, 32).eval()
    return source, target


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("arch", "size"), _shape_cases())
def test_classifier_maps_channels_last_images_to_logits(arch, size):
    model = build_classifier(arch, 7, size).eval().to(memory_format=torch.channels_last)
    x = _images(2, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = build_classifier("small", 10, 32).eval()
    x = _images(4)
    with torch.no_grad():
        plain = model(x)
        fast = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_flip_average_evaluates_the_mean_of_both_views_and_trains_on_one():
    torch.manual_seed(0)
    plain = build_classifier("small", 10, 32).eval()
    averaged = build_classifier("small", 10, 32, flip_average=True).eval()
    averaged.load_state_dict(plain.state_dict())  # same keys: the flag is not in the state dict
    x = _images(4)
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(3))) / 2
        assert (plain(x) - plain(x.flip(3))).abs().max() > 1e-4  # the views differ
        torch.testing.assert_close(averaged(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(averaged(x.flip(3)), averaged(x), rtol=1e-5, atol=1e-6)
        averaged.train(), plain.train()
        torch.testing.assert_close(averaged(x), plain(x))


def test_small_net_has_about_a_third_of_a_million_parameters():
    assert 150_000 <= count_parameters(build_classifier("small", 10, 32)) <= 600_000


def test_small_net_width_scales_parameters():
    narrow = count_parameters(build_classifier("small", 10, 32, width=0.5))
    assert narrow < count_parameters(build_classifier("small", 10, 32)) / 3


def test_small_net_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = build_classifier("small", 10, 32)
    x, y = _images(8), torch.arange(8) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= losses[0] / 2


def test_unknown_classifier_lists_known_names():
    with pytest.raises(ValueError, match="unknown classifier 'vgg16'.*resnet18.*small"):
        build_classifier("vgg16", 10, 32)


def test_normalization_is_the_first_layer_with_given_mean_and_std():
    model = build_classifier("resnet18", 10, 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((1, 3, 4, 4), 0.75)
    torch.testing.assert_close(model.normalize(x), torch.ones_like(x))
    assert list(model.state_dict())[:2] == ["normalize.mean", "normalize.std"]


@pytest.mark.parametrize(("size", "kernel"), [(32, 3), (64, 3), (128, 7)])
def test_resnet_stem_follows_image_size(size, kernel):
    net = build_classifier("resnet18", 10, size).net
    assert net.conv1.kernel_size == (kernel, kernel)
    assert isinstance(net.maxpool, nn.Identity) == (kernel == 3)


def test_wide_resnet_uses_robustbench_key_names():
    keys = build_classifier("wrn-28-10", 10, 32).net.state_dict()
    expected = [
        "conv1.weight",
        "block1.layer.0.bn1.running_mean",
        "block1.layer.0.convShortcut.weight",
        "block3.layer.3.conv2.weight",
        "bn1.weight",
        "fc.bias",
    ]
    assert all(k in keys for k in expected)
    assert "block1.layer.1.convShortcut.weight" not in keys


def test_wide_resnet_28_10_has_robustbench_parameter_count():
    assert count_parameters(build_classifier("wrn-28-10", 10, 32)) == 36_479_194


def test_wide_resnet_refuses_a_depth_not_6n_plus_4():
    from atop_core.nets.classifiers import wide_resnet

    with pytest.raises(ValueError, match="6n \\+ 4"):
        wide_resnet(30, 2, 10, 32)


def test_count_parameters_counts_weights_and_biases():
    assert count_parameters(nn.Linear(3, 2)) == 8


@pytest.mark.parametrize("layout", ["raw", "module-prefixed", "state_dict", "model_state_dict"])
def test_checkpoint_round_trip_gives_identical_logits(small_pair, tmp_path, layout):
    source, target = small_pair
    state = source.state_dict()
    saved = {
        "raw": state,
        "module-prefixed": {f"module.{k}": v for k, v in state.items()},
        "state_dict": {"state_dict": state, "epoch": 3},
        "model_state_dict": {"model_state_dict": state, "epoch": 3},
    }[layout]
    torch.save(saved, tmp_path / "ckpt.pt")
    load_external_state_dict(target, tmp_path / "ckpt.pt")
    with torch.no_grad():
        torch.testing.assert_close(target(_images()), source(_images()), rtol=0, atol=0)


def test_checkpoint_without_normalization_loads_into_net_with_identity_normalize(
    small_pair, tmp_path
):
    source, target = small_pair
    torch.save(source.net.state_dict(), tmp_path / "robustbench_like.pt")
    with pytest.warns(UserWarning, match="identity"):
        load_external_state_dict(target, tmp_path / "robustbench_like.pt")
    assert target.normalize.mean.eq(0).all() and target.normalize.std.eq(1).all()
    with torch.no_grad():
        torch.testing.assert_close(target(_images()), source.net(_images()), rtol=0, atol=0)


def test_checkpoint_without_batchnorm_counters_loads(small_pair, tmp_path):
    """Checkpoints from before PyTorch 0.4.1 (some RobustBench ones) lack these counters."""
    source, target = small_pair
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pt")
    load_external_state_dict(target, tmp_path / "old.pt")
    with torch.no_grad():
        torch.testing.assert_close(target(_images()), source(_images()), rtol=0, atol=0)


def test_mismatched_keys_raise_value_error_naming_them(small_pair, tmp_path):
    source, target = small_pair
    state = source.state_dict()
    state["net.head.weight"] = state.pop("net.fc.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match="missing.*net.fc.weight.*unexpected.*net.head.weight"):
        load_external_state_dict(target, tmp_path / "renamed.pt")


def test_mismatched_shapes_raise_value_error_naming_the_key(tmp_path):
    torch.save(build_classifier("small", 100, 32).state_dict(), tmp_path / "cifar100.pt")
    with pytest.raises(ValueError, match="net.fc.weight: file \\(100, 128\\)"):
        load_external_state_dict(build_classifier("small", 10, 32), tmp_path / "cifar100.pt")
