"""Which code computed a result: the sources digest, the commit, and where they are recorded."""

import pandas as pd
import torch

from atop_core import provenance, report
from atop_core.config import get_profile
from atop_core.evaluation import evaluate_defense
from atop_core.io import read_json
from tests.conftest import save_tiny_defense, write_tree
from tests.test_evaluation import ATTACK


def test_sources_digest_follows_every_source_byte(tmp_path, monkeypatch):
    (tmp_path / "nets").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "nets" / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not code")
    monkeypatch.setattr(provenance, "PACKAGE", tmp_path)
    version = provenance.code_version.__wrapped__
    first = version()
    assert len(first["sources"]) == 64 and version() == first
    (tmp_path / "notes.txt").write_text("still not code")
    assert version()["sources"] == first["sources"]
    (tmp_path / "nets" / "b.py").write_text("y = 3\n")
    assert version()["sources"] != first["sources"]


def test_the_installed_package_names_its_commit():
    version = provenance.code_version()
    assert version == provenance.code_version.__wrapped__()
    if version["git"] is not None:  # a git checkout: a full commit, maybe with +changes
        assert len(version["git"].removesuffix("+changes")) in (40, 64)  # SHA-1 or SHA-256
    assert provenance.short(version).startswith(version["sources"][:12])
    assert provenance.short(None) == "unrecorded"
    full = {"sources": "ab" * 32, "git": "1234567" + "0" * 33 + "+changes"}
    assert provenance.short(full) == "abababababab (git 1234567+changes)"
    sha256_repo = {"sources": "ab" * 32, "git": "7654321" + "0" * 57}
    assert provenance.short(sha256_repo) == "abababababab (git 7654321)"


def test_records_and_defense_sidecars_carry_the_code(tmp_path, monkeypatch):
    write_tree(tmp_path, "cifar10", per_class=1)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path))
    path = save_tiny_defense(tmp_path / "defense-ae-rt2-atop.pt")
    assert read_json(path.with_suffix(".json"))["code"] == provenance.code_version()
    record, _ = evaluate_defense(
        path,
        get_profile("smoke"),
        ATTACK,
        protocol="whole-model",
        device=torch.device("cpu"),
        n=4,
        draws=2,
        sanity=False,
    )
    assert record["env"]["atop_core"] == provenance.code_version()


def test_report_header_counts_the_code_versions():
    one = pd.DataFrame({"code": ["a (git 1)"] * 3})
    assert report.code_statement(one) == "Code: atop_core sources a (git 1)."
    mixed = pd.DataFrame({"code": ["b", "a (git 1)", "a (git 1)", "unrecorded"]})
    text = report.code_statement(mixed)
    assert "3 versions" in text and text.endswith("a (git 1): 2; b: 1; unrecorded: 1.")
    assert report.code_statement(pd.DataFrame({"code": []})) == ""
    only_old = pd.DataFrame({"code": [provenance.UNRECORDED] * 2})
    assert report.code_statement(only_old).startswith("Code: not recorded")
