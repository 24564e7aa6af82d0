"""REPORT.md, REPORT.html and the table files, from synthetic records in a temporary tree."""

import pandas as pd
import pytest

from atop_core import report, tables
from atop_core.io import write_json
from tests.test_tables import make_record

PAPER_TABLE_7_RT2_ATOP_CLEAN = "90.04"  # inferred in the reference: shown with its mark


def write_records(root, profile="quick"):
    """A few records that land in table 7 and the full-gradient PGD+EOT table."""
    folder = root / "results" / profile / "cifar10"
    records = {
        "defense-gan-rt2-atop__clean__whole-model": make_record(
            attack="clean", single=0.34, unreliable=None, profile=profile
        ),
        "defense-gan-rt2-atop__pgd-eot-10-eot4__whole-model": make_record(
            single=0.11, unreliable=True, profile=profile
        ),
        "defense-gan-rt2-plain__pgd-eot-10-eot4__whole-model": make_record(
            defense="defense-gan-rt2-plain", single=0.12, profile=profile
        ),
        "defense-gan-rt2-plain__bpda-eot-10-eot4__whole-model": make_record(
            defense="defense-gan-rt2-plain", attack="bpda-eot", single=0.25, profile=profile
        ),
        "defense-gan-rt2-plain__pgd-10__classifier-only": make_record(
            defense="defense-gan-rt2-plain",
            attack="pgd",
            single=0.4,
            protocol="classifier-only",
            eot=1,
            profile=profile,
        ),
    }
    for stem, record in records.items():
        write_json(folder / f"{stem}.json", record)
    return root / "results"


@pytest.fixture
def written(tmp_path):
    results = write_records(tmp_path)
    figures = tmp_path / "figures" / "quick"
    figures.mkdir(parents=True)
    (figures / "robust_vs_eps-cifar10.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (figures / "robust_vs_eps-cifar10.pdf").write_bytes(b"%PDF-1.4\n")  # its twin: not listed
    (figures / "training_curves.pdf").write_bytes(b"%PDF-1.4\n")  # alone: linked
    out = tmp_path / "REPORT.md"
    notes = {"cifar100": "no local copy offline"}
    md, html = report.write_report(
        results, tmp_path / "tables", tmp_path / "figures", "quick", out=out, notes=notes
    )
    return tmp_path, md.read_text(), html.read_text()


def test_report_marks_unreliable_records_and_unknown_paper_cells(written):
    _, md, html = written
    assert f"{tables.UNRELIABLE_MARK} 11.00" in md  # the unreliable PGD+EOT record, in a table
    assert f"{tables.UNRELIABLE_MARK} 11.00" in html
    assert f"{PAPER_TABLE_7_RT2_ATOP_CLEAN}{tables.INFERRED_MARK} → 34.00" in md
    assert "?? → not run" in md  # unknown paper cell, no record
    assert "1 marked unreliable; 1 not sanity-checked" in md


def test_report_sets_the_full_gradient_attack_beside_bpda_and_classifier_only(written):
    _, md, html = written
    section = md.split("## Attack strength")[1].split("\n## ")[0]
    assert "defense-gan-rt2-plain" in section and "defense-gan-rt2-atop" not in section  # 1 of 3
    assert "12.0 [7.0, 17.0]" in section and "40.0 [35.0, 45.0]" in section and "| yes |" in section
    assert "Attack strength" in html


def test_report_states_the_profile_scale(tmp_path):
    results = write_records(tmp_path, profile="smoke")
    md, _ = report.write_report(
        results, tmp_path / "t", tmp_path / "f", "smoke", out=tmp_path / "R.md"
    )
    assert "these are not results" in md.read_text()
    assert "reduced scale" in report.scale_statement("quick")
    assert "512 test images" in report.scale_statement("quick")


def test_report_lists_what_was_not_run_and_why(written):
    _, md, _ = written
    section = md.split("## What was not run, and why")[1].split("## Paper tables whose")[0]
    assert "`table8_imagenette_ablation`" in section
    assert "no imagenette records at this profile: all cells" in section
    assert "`table2_sota_cifar10`: runs at the paper profile only" in section
    assert "cifar100: no local copy offline" in section


def test_report_embeds_figures_that_exist_by_relative_path(written):
    _, md, html = written
    assert "![robust_vs_eps](figures/quick/robust_vs_eps-cifar10.png)" in md
    assert "<img src='figures/quick/robust_vs_eps-cifar10.png'" in html
    assert "robust_vs_eps-cifar10.pdf" not in md
    assert "`figures/quick/training_curves.pdf`" in md
    assert "Not produced yet: no file named `robust_vs_steps_eot*`" in md


def test_report_writes_every_table_as_markdown_csv_and_latex(written):
    root, _, _ = written
    for table_id in tables.load_reference()["tables"]:
        for suffix in (".md", ".csv", ".tex"):
            assert (root / "tables" / f"{table_id}{suffix}").exists()
    long = pd.read_csv(root / "tables" / "rebuttal_pgd_eot_full_gradient.csv")
    row = long[(long["row"] == "rt2-atop") & (long["column"] == "pgd-eot")].iloc[0]
    assert (row["paper"], row["ours"], row["diff"]) == pytest.approx((64.06, 11.0, 11.0 - 64.06))
    assert bool(row["unreliable"]) is True


def test_html_escapes_record_text():
    blocks = [("p", "a <b> & `code`"), ("table", pd.DataFrame({"x": ["<i>"]}))]
    page = report.render_html(blocks, "t")
    assert "a &lt;b&gt; &amp; <code>code</code>" in page
    assert "&lt;i&gt;" in page


def test_markdown_table_escapes_pipes():
    text = report.markdown_table(pd.DataFrame({"a|b": ["x|y"]}))
    assert text.splitlines() == ["| a\\|b |", "|---|", "| x\\|y |"]


def test_latex_escape_handles_specials_and_marks():
    assert report.latex_escape("50% & x_1 ✓ ⁱ") == r"50\% \& x\_1 \checkmark{} \textsuperscript{i}"


def test_the_scale_statement_names_each_datasets_changes():
    text = report.scale_statement("quick")
    assert "On imagenette: data.max_size 32;" in text and "claims C1, C5" in text
    assert "baselines none" in text and "frozen_split off" in text
    assert "On " not in report.scale_statement("paper")


def test_the_claims_section_shows_each_datasets_loss_traces(tmp_path):
    figures = []
    for dataset in ("cifar10", "imagenette"):
        path = tmp_path / "figures" / dataset / "claims_loss_traces.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"png")
        figures.append((dataset, path))
    figures.append(("cifar100", tmp_path / "missing.png"))
    blocks = report.claims_blocks(pd.DataFrame(), pd.DataFrame(), figures, tmp_path)
    captions = [b[1] for b in blocks if b[0] == "image"]
    lead = "Attack loss per iterate of the claims' records"
    assert captions == [
        ("figures/cifar10/claims_loss_traces.png", f"{lead} (cifar10)"),
        ("figures/imagenette/claims_loss_traces.png", f"{lead} (imagenette)"),
    ]
