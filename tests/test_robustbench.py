"""RobustBench classifiers, loaded offline through RobustBench's own code from its model layout."""

import pytest
import torch

from atop_core.config import settings
from atop_core.nets import robustbench
from atop_core.nets.classifiers import build_classifier

if not robustbench.installed():
    pytest.skip("RobustBench is the extra atop-core[robustbench]", allow_module_level=True)

ARCH = "robustbench:Standard"


def _write_robustbench_checkpoint(name: str = "Standard") -> dict:
    """A WideResNet-28-10 state dict where RobustBench keeps it, under its DataParallel keys."""
    torch.manual_seed(3)
    net = robustbench._zoo_entry(name, "Linf", "cifar10")["model"]()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = robustbench.model_dir() / "cifar10" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state}, path)
    return net.state_dict()


@pytest.mark.slow  # a WideResNet-28-10: 146 MB of weights
def test_a_checkpoint_in_robustbenchs_layout_loads_without_a_download(monkeypatch):
    expected = _write_robustbench_checkpoint()
    utils = robustbench._utils()
    monkeypatch.setattr(utils, "download_gdrive_new", lambda *a: pytest.fail("downloaded"))
    model = robustbench.load(ARCH, 10, 32)
    loaded = model.net.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model.normalize(x), x)  # RobustBench's nets take [0, 1] input
    # the defense file's rebuild: the same architecture, untrained, from the same name
    rebuilt = build_classifier(ARCH, 10, 32)
    rebuilt.load_state_dict(model.state_dict())


def test_offline_without_the_checkpoint_says_where_to_put_it(monkeypatch):
    def offline(gdrive_id, path):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(robustbench._utils(), "download_gdrive_new", offline)
    with pytest.raises(robustbench.RobustBenchUnavailable) as err:
        robustbench.load("robustbench:Wong2020Fast", 10, 32)
    where = settings().cache_dir / "robustbench" / "cifar10" / "Linf" / "Wong2020Fast.pt"
    assert "network is unreachable" in str(err.value) and f"put its checkpoint at {where}" in str(
        err.value
    )
    assert not where.exists()


@pytest.mark.parametrize(
    ("arch", "says"),
    [
        ("robustbench:Nope", "has no cifar10 Linf model 'Nope'"),
        ("robustbench:Standard:L3", "threat one of Linf, L2, corruptions"),
        ("robustbench:", "not a RobustBench classifier name"),
    ],
)
def test_bad_names_are_refused_clearly(arch, says):
    with pytest.raises(ValueError, match=says):
        robustbench.load(arch, 10, 32)


def test_imagenette_has_no_robustbench_classifier():
    with pytest.raises(ValueError, match="RobustBench has no classifiers for 10 classes at 128"):
        robustbench.load(ARCH, 10, 128)


@pytest.mark.slow
def test_a_profile_names_robustbench_as_its_frozen_classifier(tmp_path, monkeypatch):
    from atop_core import pipeline
    from atop_core.config import DataConfig, get_profile, with_fields
    from tests.conftest import write_tree

    write_tree(tmp_path / "data", "cifar10", per_class=2)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path / "data"))
    expected = _write_robustbench_checkpoint()
    smoke = get_profile("smoke")
    profile = with_fields(
        smoke, data=DataConfig(n_eval=4), classifier=with_fields(smoke.classifier, arch=ARCH)
    )
    data = pipeline.load_bundle(profile, "cifar10")
    classifier = pipeline.get_classifier(profile, data, torch.device("cpu"))
    assert all(torch.equal(classifier.net.state_dict()[k], v) for k, v in expected.items())
    assert not any(p.requires_grad for p in classifier.parameters())  # frozen, never trained
