"""The reproduction report and the table files: the edge where `tables.py` meets the disk.

`write_report` reads the evaluation records of one profile and writes tables/<id>.md|csv|tex and
REPORT.md with the same content as REPORT.html: a header that states the profile's scale plainly,
every paper table beside ours (paper value, ours with its interval, the difference, protocol and
profile), the attack-strength check, the figures that exist, what was not run and why, and
every record used.
"""

import html
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from atop_core.analysis import attack_strength
from atop_core.config import PROFILES, Profile
from atop_core.io import write_bytes_atomic
from atop_core.precision import FLOAT32
from atop_core.provenance import UNRECORDED
from atop_core.tables import (
    INFERRED_MARK,
    LEGEND,
    UNCHECKED_MARK,
    UNKNOWN,
    block_heading,
    build_table,
    load_records_frame,
    load_reference,
    not_run_summary,
    table_entry,
    table_notes,
    wide_tables,
)

Block = tuple[str, object]  # ("h", (level, text)) | ("p", text) | ("table", DataFrame) | ...
FIGURE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".pdf")
SCALE_LEADS = {
    "smoke": "SMOKE PROFILE: these are not results. The smoke profile is a pipeline test on tiny "
    "subsets, tiny networks and 2-step attacks; its numbers mean nothing.",
    "quick": "QUICK PROFILE: reduced scale, not the paper's experiment. Small CPU networks instead "
    "of ResNet-18/34 and WideResNets, short training, a reduced attack budget; compare trends "
    "with the paper, not values.",
    "paper": "PAPER PROFILE: the paper's architectures and attack budgets.",
}


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs `tabulate`, not installed)."""

    def text(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(text(c) for c in df.columns) + " |"]
    lines.append("|" + "---|" * len(df.columns))
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


LATEX_CHARS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#"}
LATEX_CHARS |= {"_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}"}
LATEX_CHARS |= {"^": r"\textasciicircum{}", "✓": r"\checkmark{}", "✗": r"$\times$"}
LATEX_CHARS |= {"×": r"$\times$", "⚠": r"\textbf{!}", "→": r"$\rightarrow$", "−": "--"}
LATEX_CHARS |= {"–": "--", "·": r"$\cdot$", "∞": r"$\infty$", "≤": r"$\leq$", "…": r"\dots{}"}
LATEX_CHARS |= {INFERRED_MARK: r"\textsuperscript{i}", UNCHECKED_MARK: r"\textsuperscript{o}"}


def latex_escape(text: object) -> str:
    return "".join(LATEX_CHARS.get(ch, ch) for ch in str(text))


def latex_table(df: pd.DataFrame, caption: str) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs,amssymb}); no jinja2 needed."""
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}"]
    lines += [rf"\begin{{tabular}}{{{'l' * len(df.columns)}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(c) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [
        " & ".join(latex_escape(v) for v in row) + r" \\" for row in df.itertuples(index=False)
    ]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def table_blocks(table_id: str, long: pd.DataFrame, entry: dict, level: int, links: str = ""):
    """One paper table as document blocks: provenance, a table per protocol block, notes, and
    the cells not run with their reasons."""
    ref = f"`{table_id}` · {entry['paper_ref']} · paper source: {entry['source']}"
    blocks: list[Block] = [("h", (level, entry["title"]))]
    blocks.append(("p", f"{ref} · notebook: `{entry['notebook']}`{links}"))
    for block, wide in wide_tables(long, entry):
        blocks += [("p", f"**{block_heading(long, block, entry)}**"), ("table", wide)]
    for title, items in (
        ("Notes", table_notes(long, entry)),
        ("Not run", not_run_summary(long, entry)),
    ):
        blocks += [("p", f"{title}:"), ("list", items)] if items else []
    return blocks


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for kind, payload in blocks:
        if kind == "h":
            parts.append("#" * payload[0] + " " + payload[1])
        elif kind == "table":
            parts.append(markdown_table(payload))
        elif kind == "list":
            parts.append("\n".join(f"- {item}" for item in payload))
        elif kind == "image":
            parts.append(f"![{payload[1]}]({payload[0]})")
        elif kind == "scale":
            parts.append(f"> **{payload}**")
        else:
            parts.append(str(payload))
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """Escaped text with the two Markdown marks the report uses: `code` and **bold**."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


HTML_STYLE = (
    "body{font-family:sans-serif;max-width:80em;margin:auto;padding:1em;line-height:1.4}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:90%}"
    "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
    ".scale{border:2px solid #c60;padding:.5em;background:#fff4e5}img{max-width:100%}"
)


def render_html(blocks: list[Block], title: str) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{HTML_STYLE}</style>")
    for kind, payload in blocks:
        if kind == "h":
            parts.append(f"<h{payload[0]}>{_inline_html(payload[1])}</h{payload[0]}>")
        elif kind == "table":
            parts.append(payload.to_html(index=False, border=0, escape=True))
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in payload) + "</ul>")
        elif kind == "image":
            src, alt = (html.escape(p, quote=True) for p in payload)
            parts.append(f"<figure><img src='{src}' alt='{alt}'></figure>")
        else:
            css = " class='scale'" if kind == "scale" else ""
            parts.append(f"<p{css}>{_inline_html(payload)}</p>")
    return "\n".join(parts) + "\n"


def write_table(table_id: str, long: pd.DataFrame, reference: dict, tables_dir: Path) -> list[Path]:
    """tables/<id>.md (the paper's layout), .csv (the long form, every field) and .tex."""
    entry, tables_dir = table_entry(reference, table_id), Path(tables_dir)
    blocks = table_blocks(table_id, long, entry, 1)
    md = render_markdown(blocks[:2] + [("p", LEGEND)] + blocks[2:])
    tex = "".join(
        latex_table(wide, f"{entry['title']} ({block_heading(long, block, entry)})")
        for block, wide in wide_tables(long, entry)
    )
    files = {
        tables_dir / f"{table_id}.md": md,
        tables_dir / f"{table_id}.csv": long.to_csv(index=False),
        tables_dir / f"{table_id}.tex": tex,
    }
    for path, text in files.items():
        write_bytes_atomic(path, text.encode())
    return list(files)


def write_tables(
    records_df: pd.DataFrame, reference: dict, tables_dir: Path, *, profile: str | None = None
) -> dict[str, pd.DataFrame]:
    """Build and write every table of the reference; returns the long forms by table id."""
    built = {t: build_table(t, records_df, reference, profile=profile) for t in reference["tables"]}
    for table_id, long in built.items():
        write_table(table_id, long, reference, tables_dir)
    return built


def scale_statement(profile: str) -> str:
    """What a profile's numbers are, in plain words, with its budgets read from its config."""
    if profile not in PROFILES:
        return f"Profile {profile!r} is not a known profile: its scale is not described."
    p, e = PROFILES[profile], PROFILES[profile].evaluation
    cap = f" every attack capped at {e.step_cap} steps (a PGD-1000 column ran PGD-{e.step_cap})"
    cap += f" and EOT {e.eot_cap} (an EOT-10 column ran EOT {e.eot_cap});" if e.eot_cap else ";"
    table_n = f" {e.n_table} images per attacked table cell;" if e.n_table else ""
    return (
        f"{SCALE_LEADS.get(profile, '')} Scale: {p.data.n_eval} test images per dataset "
        f"(clean accuracy);{table_n} classifier {p.classifier.arch} ({p.classifier.arch_large} "
        f"for ImageNette); purifier width {p.purifier.width}; attacks with a profile budget of "
        f"{e.steps} steps and EOT {e.eot};{cap if e.step_cap else ''} {e.draws} defense draws "
        f"per adversarial example; sanity checks on {e.sanity_n} images (the bare-classifier "
        f"check on all of a record's); datasets: "
        f"{', '.join(p.datasets)}.{dataset_changes(p)}"
    ).strip()


def dataset_changes(p: Profile) -> str:
    """The profile's changes for single datasets (`Profile.per_dataset`), as a sentence each."""
    out = ""
    for dataset, changes in p.per_dataset.items():
        parts = []
        for name, value in changes.items():
            if isinstance(value, dict):
                parts += [f"{name}.{k} {v}" for k, v in value.items()]
            else:
                shown = ", ".join(map(str, value)) if isinstance(value, tuple) else value
                parts.append(f"{name} {'off' if value is False else shown or 'none'}")
        out += f" On {dataset}: {'; '.join(parts)}."
    return out


def code_statement(done: pd.DataFrame) -> str:
    """Which versions of atop_core computed the records (`provenance.short`), most used first."""
    counts = sorted(done["code"].value_counts().items(), key=lambda kv: (-kv[1], kv[0]))
    if not counts:
        return ""
    if len(counts) == 1:
        code = counts[0][0]
        return (
            "Code: not recorded (records written before records named their code)."
            if code == UNRECORDED
            else f"Code: atop_core sources {code}."
        )
    listed = "; ".join(f"{code}: {n}" for code, n in counts)
    return (
        f"Code: the records come from {len(counts)} versions of atop_core (records are named by "
        "configuration, so a results directory keeps them across code changes; rerun into an "
        f"empty one for a single version): {listed}."
    )


def precision_statement(done: pd.DataFrame) -> str:
    """Says how many records were attacked under bf16 autocast; nothing when none was."""
    bf16 = int((done["precision"] != FLOAT32).sum()) if "precision" in done else 0
    if not bf16:
        return ""
    return (
        f"Precision: {bf16} of {len(done)} records were attacked under bf16 autocast "
        "(`ATOP_AMP`; judged in float32), the others in float32."
    )


def header_blocks(profile: str, frame: pd.DataFrame, results_path: Path) -> list[Block]:
    done = frame[frame["complete"].astype(bool)]
    datasets = ", ".join(sorted(set(done["dataset"]))) or "none"
    counts = (
        f"{len(done)} complete records in `{results_path}` (datasets: {datasets}); "
        f"{len(frame) - len(done)} partial records left out; "
        f"{int(done['unreliable'].map(lambda v: v is True).sum())} marked unreliable; "
        f"{int(done['unreliable'].isna().sum())} not sanity-checked. {code_statement(done)}"
    )
    if precision := precision_statement(done):
        counts += f" {precision}"
    return [
        ("h", (1, f"AToP reproduction report: profile `{profile}`")),
        ("scale", scale_statement(profile)),
        ("p", counts + " Every number of ours comes from a record; none is typed in."),
        ("h", (2, "How to read the tables")),
        ("p", LEGEND),
        ("p", "Sources of the paper's numbers (atop_core/reference/paper.yaml):"),
    ]


def reference_frame(entry: dict) -> pd.DataFrame:
    """An entry's reference values alone, in its layout (a figure's reference data)."""
    rows = []
    for row in entry["rows"]:
        out = dict(zip(entry["row_headers"], row["labels"], strict=True))
        for column in entry["columns"]:
            value = row["cells"][column["id"]]["value"]
            out[column["label"]] = UNKNOWN if value is None else f"{value:.2f}"
        rows.append(out)
    return pd.DataFrame(rows)


def figure_blocks(reference: dict, figures_dir: Path, out_dir: Path) -> list[Block]:
    """Each figure: provenance, its files under figures/ named `<figure id>*`, reference data."""
    blocks: list[Block] = [("h", (2, "Figures"))]
    for fig_id, entry in reference["figures"].items():
        found = [p for p in Path(figures_dir).rglob(f"{fig_id}*") if p.suffix in FIGURE_SUFFIXES]
        shown = {p.with_suffix("") for p in found if p.suffix != ".pdf"}  # a PDF twin: not again
        files = sorted(p for p in found if p.suffix != ".pdf" or p.with_suffix("") not in shown)
        blocks.append(("h", (3, entry["title"])))
        blocks.append(
            (
                "p",
                f"`{fig_id}` · {entry['paper_ref']} · source: {entry['source']} · "
                f"notebook: `{entry['notebook']}`",
            )  # fmt: skip
        )
        if entry.get("caption"):
            blocks.append(("p", f"Paper caption: {entry['caption']}"))
        if entry.get("note"):
            blocks.append(("p", entry["note"]))
        for path in files:
            rel = os.path.relpath(path, out_dir)
            blocks.append(("image", (rel, fig_id)) if path.suffix != ".pdf" else ("p", f"`{rel}`"))
        if not files:
            blocks.append(
                ("p", f"Not produced yet: no file named `{fig_id}*` under `{figures_dir}`.")
            )
        if entry.get("rows"):
            blocks += [("p", "Reference values:"), ("table", reference_frame(entry))]
    return blocks


def not_run_blocks(
    built: dict[str, pd.DataFrame], reference: dict, notes: Mapping[str, str]
) -> list[Block]:
    """Every table's cells without a record, grouped by reason, then the caller's notes."""
    items = [
        f"`{table_id}`: {line}"
        for table_id, long in built.items()
        for line in not_run_summary(long, table_entry(reference, table_id))
    ]
    items += [f"{name}: {text}" for name, text in notes.items()]
    unrecovered = [u["title"] for u in reference.get("unrecovered", [])]
    return [
        ("h", (2, "What was not run, and why")),
        ("list", items or ["Every cell has a record."]),
        ("h", (2, "Paper tables whose content is unknown")),
        ("list", unrecovered),
    ]


def strength_blocks(frame: pd.DataFrame) -> list[Block]:
    """The check that the headline attack is the strongest one run (`analysis.attack_strength`)."""
    table = attack_strength(frame)
    lead = (
        "Single-draw accuracy (%, Wilson 95%) on the same images under full-gradient PGD-EOT "
        "through the whole defense, BPDA+EOT (the purifier skipped in the backward pass) and PGD "
        "on the bare classifier, then purified (the classifier-only protocol), all at the "
        "profile's steps and EOT. A defense evaluated by a weaker attack than the first column "
        "would look more robust than it is."
    )
    if table.empty:
        body: Block = ("p", "No defense has all three records at this profile's budget yet.")
    else:
        body = ("table", table)
    return [
        ("h", (2, "Attack strength: full gradient vs BPDA vs classifier-only")),
        ("p", lead),
        body,
    ]


CLAIMS_LEAD = (
    "Each row compares two records on the same fixed test images: a defense under an attack, "
    "judged over every draw of the record. The reading that decides is the majority vote over "
    "the draws (the deployed random defense answers by vote); worst-of-N (every draw right) is "
    "shown beside it. The paired difference has Newcombe's 95% interval, the p-value is the exact "
    "McNemar test on the images the two records disagree on, Holm-adjusted across one dataset's "
    "rows. "
    "`supported` needs a significant difference in the claimed direction (or, for 'keeps' and "
    "'at least as strong', an interval within the stated margin); rows on too few images, or on "
    "a purifier that keeps less than half the classifier's clean accuracy, are inconclusive, "
    "with the reason. So is a verdict that rests on a record the sanity checks or "
    "attack-failure indicators mark unreliable: between two defenses under one attack, the arm "
    "the verdict needs high (its robustness may be overstated). Between two attacks on one "
    "defense (C5, C6) each record measures its own attack, judged by the real defense with "
    "fresh draws: a weak attack is what the row compares, so its sanity checks are shown beside "
    "the verdict, not in its way."
)
SPLIT_LEAD = (
    "What the randomness gives: robust accuracy (vote) under the same attack with fresh draws, "
    "and with each image's draw frozen so that the attack and the judge share it (the purifier's "
    "robustness on its own)."
)


def claims_blocks(
    claims: pd.DataFrame, split: pd.DataFrame, figures: list[tuple[str, Path]], out_dir: Path
) -> list[Block]:
    """The claims section that opens the report (`claims.display` rows, the randomness split,
    each dataset's loss traces of the compared records)."""
    blocks: list[Block] = [("h", (2, "The paper's claims, decided")), ("p", CLAIMS_LEAD)]
    blocks.append(("table", claims) if not claims.empty else ("p", "No claim has records yet."))
    if not split.empty:
        blocks += [("p", SPLIT_LEAD), ("table", split)]
    for dataset, figure in figures:
        if figure.exists():
            caption = f"Attack loss per iterate of the claims' records ({dataset})"
            blocks.append(("image", (os.path.relpath(figure, out_dir), caption)))
    return blocks


def records_blocks(frame: pd.DataFrame) -> list[Block]:
    """Every record, so a number can be traced to its file; accuracies in %."""
    done = frame[frame["complete"].astype(bool)].sort_values(["dataset", "defense", "attack"])
    table = pd.DataFrame(
        {
            "dataset": done["dataset"],
            "defense": done["defense"],
            "attack": done["tag"].fillna(done["attack"]),
            "protocol": done["protocol"]
            + done["randomness"].map({"frozen": " (frozen)"}).fillna(""),
            "n": done["n"],
            "single [95%]": [
                f"{100 * s:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                for s, lo, hi in zip(
                    done["single"], done["single_lo"], done["single_hi"], strict=True
                )
            ],
            "vote": (100 * done["vote"]).round(2),
            "worst": (100 * done["worst"]).round(2),
            "sanity": done["unreliable"]
            .map({True: "⚠ unreliable", False: "passed"})
            .fillna("not checked"),
            "indicators fired": done["fired"].fillna(""),
        }
    )
    return [("h", (2, "All records")), ("table", table)]


README_START, README_END = "<!-- claims:start -->", "<!-- claims:end -->"


def update_readme(readme: Path, claims: pd.DataFrame, source: str) -> bool:
    """Replace the README's text between its claims markers with the claims table and the line
    naming where it comes from; False (nothing written) when the markers are missing."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    body = f"\n{markdown_table(claims)}\n\n{source}\n"
    write_bytes_atomic(readme, (head + README_START + body + README_END + tail).encode())
    return True


def write_report(
    results_dir: Path,
    tables_dir: Path,
    figures_dir: Path,
    profile: str,
    out: Path = Path("REPORT.md"),
    notes: Mapping[str, str] | None = None,
    claims: list[Block] | None = None,
) -> tuple[Path, Path]:
    """Write tables/<id>.* and REPORT.md + REPORT.html for one profile, from the records under
    `results_dir/<profile>` (results_dir is the results root). `notes` (name -> text) add lines
    to the not-run section, e.g. {"cifar100": "no local copy, and no network to download it"};
    `claims` (`claims_blocks`) opens the report, after its header."""
    reference, out = load_reference(), Path(out)
    records_path = Path(results_dir) / profile
    frame = load_records_frame(records_path)
    built = write_tables(frame, reference, tables_dir, profile=profile)
    shown = Path(records_path)  # relative to the report when it can be: no machine paths
    if shown.is_absolute() and shown.resolve().is_relative_to(Path(out).resolve().parent):
        shown = shown.resolve().relative_to(Path(out).resolve().parent)
    blocks = header_blocks(profile, frame, shown)
    if claims:
        blocks[3:3] = claims  # after the title, the scale and the counts
    blocks.append(("list", [f"{k}: {v}" for k, v in reference["source_tags"].items()]))
    blocks.append(("h", (2, "Tables")))
    for table_id, long in built.items():
        files = [Path(tables_dir) / f"{table_id}{s}" for s in (".md", ".csv", ".tex")]
        links = " · files: " + ", ".join(f"`{os.path.relpath(f, out.parent)}`" for f in files)
        blocks += table_blocks(table_id, long, table_entry(reference, table_id), 3, links)
    blocks += strength_blocks(frame)
    blocks += figure_blocks(reference, figures_dir, out.parent)
    blocks += not_run_blocks(built, reference, notes or {})
    blocks += records_blocks(frame)
    html_out = out.with_suffix(".html")
    write_bytes_atomic(out, render_markdown(blocks).encode())
    write_bytes_atomic(
        html_out, render_html(blocks, f"AToP reproduction report: {profile}").encode()
    )
    return out, html_out
