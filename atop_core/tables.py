"""Every paper table beside ours: the reference data (`reference/paper.yaml`) and the evaluation
records make one long table per paper table (a row per cell and protocol), with its cells formatted
in the paper's layout. Pure functions: `report.py` writes the files.

Nothing is invented: a cell without a matching record is "not run", with the reason; a paper cell
that was not recovered is unknown (??). When several records match one cell (AutoAttack standard
and rand, or one attack under two names), the worst is reported, as a robustness claim needs.
"""

import fnmatch
import math
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import yaml

from atop_core.config import PROFILES
from atop_core.io import read_json
from atop_core.precision import FLOAT32
from atop_core.provenance import short
from atop_core.records import record_files

REFERENCE = Path(__file__).resolve().parent / "reference" / "paper.yaml"
READINGS = ("single", "vote", "worst")  # how a stochastic defense is judged (harness.py)
SELECT_KEYS = ("dataset", "defense", "defense_suffix", "classifier", "attack", "steps", "eot")
SELECT_KEYS += ("eps", "protocol")
CELL_SOURCES = ("paper", "rebuttal", "authors-code-log", "inferred", "unknown")
ENTRY_SOURCES = ("paper", "rebuttal", "authors-code", "authors-code-log", "inferred", "project")
EPS_TOL = 1e-4  # records store eps as floats (8/255 = 0.0313725...)
NOT_RUN, NOT_COMPARED, UNKNOWN = "not run", "not compared", "??"
INFERRED_MARK, UNCHECKED_MARK = "ⁱ", "°"  # paper cell inferred; record's sanity checks not run
UNRELIABLE_MARK = "⚠ unreliable"


def load_reference(path: Path = REFERENCE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def table_entry(reference: dict, table_id: str) -> dict:
    if table_id not in reference["tables"]:
        known = ", ".join(reference["tables"])
        raise ValueError(f"unknown table {table_id!r}; known: {known}")
    return reference["tables"][table_id]


def _check_cells(where: str, entry: dict, unit_is_percent: bool) -> list[str]:
    problems, columns = [], [c["id"] for c in entry["columns"]]
    for row in entry["rows"]:
        if len(row["labels"]) != len(entry["row_headers"]):
            problems.append(f"{where}/{row['id']}: {len(row['labels'])} labels for headers")
        if sorted(row["cells"]) != sorted(columns):
            problems.append(f"{where}/{row['id']}: cells {sorted(row['cells'])} != {columns}")
        for col, cell in row["cells"].items():
            value, source = cell.get("value"), cell.get("source")
            if source not in CELL_SOURCES or (value is None) != (source == "unknown"):
                problems.append(f"{where}/{row['id']}/{col}: source {source!r} for {value!r}")
            elif value is not None and unit_is_percent and not 0 <= value <= 100:
                problems.append(f"{where}/{row['id']}/{col}: {value} is not a percentage")
            if source == "inferred" and not cell.get("note"):
                problems.append(f"{where}/{row['id']}/{col}: an inferred cell needs a note")
    return problems


def check_reference(reference: dict) -> list[str]:
    """What is wrong with the reference data (empty when well-formed): every entry names a known
    notebook and source, every cell a source tag, every number is a percentage (unless the
    entry's unit says otherwise), every selector uses known keys."""
    problems, notebooks = [], set(reference["notebooks"])
    entries = {**reference["tables"], **reference["figures"]}
    for name, entry in entries.items():
        if entry.get("notebook") not in notebooks:
            problems.append(f"{name}: notebook {entry.get('notebook')!r} is not in the list")
        if entry.get("source") not in ENTRY_SOURCES:
            problems.append(f"{name}: source {entry.get('source')!r}")
        selects = [entry.get("select") or {}]
        selects += [p.get("select") or {} for p in entry.get("columns", []) + entry.get("rows", [])]
        problems += [
            f"{name}: selector key {k!r}" for s in selects for k in s if k not in SELECT_KEYS
        ]
        if "rows" in entry:
            problems += _check_cells(name, entry, entry.get("unit", "%") == "%")
    return problems


def _adversarial_training(name: str) -> str:
    match = re.search(r"-at-(.+)$", name)  # defense-none-none-at-<recipe> (pipeline.train_chain)
    return match[1] if match else "none"


def record_row(record: dict, file_name: str | None = None) -> dict:
    """One record as a flat row. Records written before the schema field `defense.name` existed
    are named by their file's stem, as the record path is (`records.record_path`)."""
    defense, attack = record["defense"], record["attack"]
    stem = file_name.removesuffix(".json").split("__") if file_name else None
    name = defense.get("name") or Path(defense["file"]).stem
    row = {
        "dataset": record["dataset"],
        "profile": record["profile"],
        "protocol": record["protocol"],
        "defense": name,
        "classifier": defense.get("classifier"),
        "purifier": defense.get("purifier"),
        "transform": (defense.get("transform") or {}).get("kind"),
        "atop": defense.get("atop"),
        "adversarial_training": defense.get("adversarial_training") or _adversarial_training(name),
        "attack": attack["name"],
        "tag": stem[1] if stem and len(stem) > 2 else None,
        "steps": attack.get("steps"),
        "eot": attack.get("eot"),
        "eps": attack.get("eps"),
        "n": record["n"],
        "indices": (record.get("indices") or {}).get("sha256"),
        "draws": record.get("draws"),
        "unreliable": record.get("unreliable"),
        "complete": record.get("complete", True),
        "schema": record.get("schema", 0),
        "code": short((record.get("env") or {}).get("atop_core")),
        "precision": record.get("precision", FLOAT32),  # absent: float32 (`precision.py`)
        "randomness": record.get("randomness", "fresh"),  # absent: fresh draws (`harness.py`)
        "fired": ", ".join(k for k, v in (record.get("indicators") or {}).items() if v["fired"]),
    }
    for k in READINGS:
        row[k] = record["accuracy"][k]
        row[f"{k}_lo"], row[f"{k}_hi"] = record["interval"][k]
    return row


FRAME_COLUMNS = ("dataset", "profile", "protocol", "defense", "classifier", "purifier")
FRAME_COLUMNS += ("transform", "atop", "adversarial_training", "attack", "tag", "steps", "eot")
FRAME_COLUMNS += ("eps", "n", "indices", "draws", "unreliable", "complete", "schema", "code")
FRAME_COLUMNS += ("precision", "randomness", "fired")
FRAME_COLUMNS += tuple(f"{k}{s}" for k in READINGS for s in ("", "_lo", "_hi"))


def records_frame(records: list[dict], file_names: list[str] | None = None) -> pd.DataFrame:
    """One row per record (FRAME_COLUMNS); `file_names`, when given, parallel `records`."""
    names = file_names if file_names is not None else [None] * len(records)
    rows = [record_row(r, f) for r, f in zip(records, names, strict=True)]
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


def load_records_frame(results_dir: Path) -> pd.DataFrame:
    """Every record file under `results_dir` (e.g. results/<profile>), shard files excluded:
    `records.merge_all` merges them first. Partial records are kept, with complete=False."""
    paths = record_files(results_dir)
    return records_frame([read_json(p) for p in paths], [p.name for p in paths])


def _profile_of(frame: pd.DataFrame, profile: str | None) -> str:
    if profile is not None:
        return profile
    found = sorted(set(frame["profile"]))
    if len(found) != 1:
        raise ValueError(f"records of {found or 'no'} profiles: pass profile= explicitly")
    return found[0]


def _budget(value: object, profile: str, field: str) -> object:
    """`profile` stands for the profile's evaluation budget (steps or eot)."""
    if value != "profile":
        return value
    if profile not in PROFILES:
        raise ValueError(
            f"unknown profile {profile!r} for a profile budget; known: {list(PROFILES)}"
        )
    return getattr(PROFILES[profile].evaluation, field)


def selector(parts: list[Mapping], profile: str) -> dict:
    """Merge selectors, later parts winning (table < block < column < row < cell)."""
    sel: dict = {}
    for part in parts:
        sel.update(part or {})
    if sel.get("defense_suffix"):
        sel["defense"] = (sel.get("defense") or "*") + sel.pop("defense_suffix")
    sel.pop("defense_suffix", None)
    for field in ("steps", "eot"):
        sel[field] = _budget(sel.get(field), profile, field)
    if profile in PROFILES:  # reduced profiles cap the steps and EOT draws
        ev = PROFILES[profile].evaluation
        if isinstance(sel["steps"], int):
            sel["steps"] = ev.scale_steps(sel["steps"])
        if isinstance(sel["eot"], int):
            sel["eot"] = ev.scale_eot(sel["eot"])
    return sel


def match(frame: pd.DataFrame, sel: Mapping) -> pd.DataFrame:
    """Complete records of the deployed defense (fresh draws: a frozen-randomness diagnostic
    never stands in for a table's cell) that fit a selector; a missing or null key matches
    anything."""
    keep = frame["complete"].astype(bool) & (frame["randomness"] == "fresh")
    for key in ("dataset", "classifier", "protocol", "steps", "eot"):
        if sel.get(key) is not None:
            keep &= frame[key] == sel[key]
    if sel.get("defense") is not None:
        keep &= frame["defense"].map(lambda n: fnmatch.fnmatchcase(n, sel["defense"])).astype(bool)
    if sel.get("attack") is not None:
        names = [sel["attack"]] if isinstance(sel["attack"], str) else list(sel["attack"])
        keep &= frame["attack"].isin(names)
    if sel.get("eps") is not None:
        keep &= (frame["eps"].astype(float) - sel["eps"]).abs() < EPS_TOL
    return frame[keep]


def describe_selector(sel: Mapping) -> str:
    """A short text of what a cell looks for, for the CSV and the report's not-run list."""
    attack = sel.get("attack")
    attack = "|".join(attack) if isinstance(attack, list) else attack
    parts = [sel.get("dataset"), sel.get("classifier"), sel.get("defense"), attack]
    parts += [f"steps {sel['steps']}" if sel.get("steps") else None]
    parts += [f"eot {sel['eot']}" if sel.get("eot") else None]
    parts += [f"eps {sel['eps']:.4g}" if sel.get("eps") is not None else None]
    parts += [sel.get("protocol") or "any protocol"]
    return " · ".join(str(p) for p in parts if p)


PER_ROW = "per row"  # the block of a table whose rows pin their own protocols


def not_run_reason(entry: dict, sel: Mapping, absent: str | None, profile: str, frame) -> str:
    """Why a cell has no record, as far as the reference data and the profile tell."""
    dataset = sel.get("dataset")
    if absent:
        return absent
    if entry.get("profiles") and profile not in entry["profiles"]:
        return f"runs at the {'/'.join(entry['profiles'])} profile only"
    if dataset and not (frame["dataset"] == dataset).any():
        return f"no {dataset} records at this profile"
    return "no matching record"


def _ours(found: pd.DataFrame, paper: float | None) -> dict:
    best = found.sort_values(["single", "defense", "attack"], kind="stable").iloc[0]
    ours = 100 * best["single"]
    return {
        "status": "ok",
        "protocol": best["protocol"],
        "ours": ours,
        "lo": 100 * best["single_lo"],
        "hi": 100 * best["single_hi"],
        "vote": 100 * best["vote"],
        "worst": 100 * best["worst"],
        "diff": ours - paper if paper is not None else math.nan,
        "n": int(best["n"]),
        "unreliable": None if pd.isna(best["unreliable"]) else bool(best["unreliable"]),
        "record": f"{best['defense']} · {best['tag'] or best['attack']} · {best['protocol']}",
        "matches": len(found),
        "reason": None,
    }


def _cell(entry: dict, block: str, column: dict, row: dict, profile: str, frame) -> dict:
    cell = row["cells"][column["id"]]
    parts = [entry.get("select"), {} if block == PER_ROW else {"protocol": block}]
    sel = selector(parts + [column.get("select"), row.get("select"), cell.get("select")], profile)
    paper = cell.get("value")
    out = {
        "block": block,
        "row": row["id"],
        **dict(zip(entry["row_headers"], row["labels"], strict=True)),
        "column": column["id"],
        "column_label": column["label"],
        "dataset": sel.get("dataset"),
        "protocol": sel.get("protocol"),
        "paper": math.nan if paper is None else float(paper),
        "paper_source": cell["source"],
        "paper_note": cell.get("note"),
        "unit": entry.get("unit", "%"),
        "profile": profile,
        "wanted": describe_selector(sel),
    }
    empty = dict.fromkeys(("ours", "lo", "hi", "vote", "worst", "diff", "n"), math.nan)
    empty |= {"unreliable": None, "record": None, "matches": 0}
    absent = cell.get("absent") or row.get("absent") or column.get("absent") or entry.get("absent")
    if entry.get("compare") is False:
        return out | empty | {"status": NOT_COMPARED, "reason": absent or NOT_COMPARED}
    found = match(frame, sel)
    if found.empty:
        reason = not_run_reason(entry, sel, absent, profile, frame)
        return out | empty | {"status": NOT_RUN, "reason": reason}
    return out | _ours(found, paper)


def build_table(
    table_id: str, records_df: pd.DataFrame, reference: dict, *, profile: str | None = None
) -> pd.DataFrame:
    """The long form of one paper table: a row per (protocol block, table row, column) with the
    paper's value and source, ours (single-draw accuracy in %, its Wilson 95% interval, vote and
    worst-of-K), ours − paper, n, the record used and, when none, why not."""
    entry = table_entry(reference, table_id)
    profile = _profile_of(records_df, profile)
    frame = records_df[records_df["profile"] == profile]
    cells = [
        _cell(entry, block, column, row, profile, frame)
        for block in entry.get("blocks") or [PER_ROW]
        for row in entry["rows"]
        for column in entry["columns"]
    ]
    return pd.DataFrame(cells).assign(table=table_id)


def paper_text(cell: Mapping) -> str:
    if math.isnan(cell["paper"]):
        return UNKNOWN
    mark = INFERRED_MARK if cell["paper_source"] == "inferred" else ""
    if cell["unit"] != "%":
        return f"{cell['paper']:g} {cell['unit']}{mark}"
    return f"{cell['paper']:.2f}{mark}"


def ours_text(cell: Mapping) -> str:
    if cell["status"] != "ok":
        return cell["status"]
    text = f"{cell['ours']:.2f} [{cell['lo']:.1f}, {cell['hi']:.1f}]"
    if cell["unreliable"] is True:
        return f"{UNRELIABLE_MARK} {text}"
    return text + (UNCHECKED_MARK if cell["unreliable"] is None else "")


def format_cell(cell: Mapping) -> str:
    """`paper → ours [interval] (ours − paper)`; the paper's value alone when not compared."""
    if cell["status"] == NOT_COMPARED:
        return paper_text(cell)
    diff = "" if math.isnan(cell["diff"]) else f" ({cell['diff']:+.2f})"
    return f"{paper_text(cell)} → {ours_text(cell)}{diff}"


LEGEND = (
    "Each cell: paper → ours [95% Wilson interval] (ours − paper, in points). Ours is the "
    f"single-draw accuracy (%). {UNKNOWN}: the paper's value was not recovered. "
    f"{INFERRED_MARK}: the paper's value is inferred, not seen in the paper (see the notes). "
    f"{NOT_RUN}: no record. {UNRELIABLE_MARK}: a gradient-masking sanity check failed. "
    f"{UNCHECKED_MARK}: the record's sanity checks were not run."
)


def wide_tables(long: pd.DataFrame, entry: dict) -> list[tuple[str, pd.DataFrame]]:
    """Per protocol block, the paper's layout with formatted cells."""
    out = []
    for block in long["block"].unique():
        cells = long[long["block"] == block].to_dict("records")
        rows: dict[str, dict] = {}
        for c in cells:
            row = rows.setdefault(c["row"], {h: c[h] for h in entry["row_headers"]})
            row[c["column_label"]] = format_cell(c)
        out.append((block, pd.DataFrame(list(rows.values()))))
    return out


def block_heading(long: pd.DataFrame, block: str, entry: dict) -> str:
    cells = long[long["block"] == block]
    if entry.get("compare") is False:
        return f"Paper only, not compared: {entry.get('absent') or NOT_COMPARED}"
    ns = sorted({int(n) for n in cells["n"].dropna()})
    n_text = "no records" if not ns else f"n = {ns[0]}" + (f"–{ns[-1]}" if len(ns) > 1 else "")
    ours = "protocol per row" if block == PER_ROW else f"{block} protocol"
    profile = cells["profile"].iloc[0]
    return f"Ours: {ours} · paper: {entry['protocol']} · profile {profile} · {n_text}"


def _where(cells: list[dict], n_rows: int) -> str:
    """Cells by column: 'FGSM, CW-100 (all rows); PGD-10 (RT1 ✗, RT3 ✓)', or the rows alone
    when they miss the same columns: 'AT, DiffPure: every column'."""
    by_column: dict[str, list[str]] = {}
    for c in cells:
        by_column.setdefault(c["column_label"], []).append(c["row_text"])
    row_sets = {tuple(rows) for rows in by_column.values()}
    if len(row_sets) == 1 and len(by_column) * len(next(iter(row_sets))) == len(cells):
        rows = next(iter(row_sets))
        if len(rows) < n_rows and len(by_column) > 1:
            return f"{'; '.join(rows)}: {', '.join(by_column)}"
    full = [col for col, rows in by_column.items() if len(rows) == n_rows]
    parts = [f"{', '.join(full)} (all rows)"] if full else []
    parts += [f"{col} ({', '.join(rows)})" for col, rows in by_column.items() if col not in full]
    return "; ".join(parts)


def _grouped(cells: list[dict], key: str, n_rows: int, n_cells: int) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for c in cells:
        if isinstance(c[key], str) and c[key]:
            groups.setdefault(c[key], []).append(c)
    return [
        f"{text}: {'all cells' if len(group) == n_cells else _where(group, n_rows)}"
        for text, group in groups.items()
    ]


def _with_row_text(long: pd.DataFrame, entry: dict) -> list[dict]:
    cells = long.to_dict("records")
    for c in cells:
        c["row_text"] = " ".join(str(c[h]) for h in entry["row_headers"])
    return cells


def table_notes(long: pd.DataFrame, entry: dict) -> list[str]:
    """The table's note, then each paper-cell note with the cells it applies to."""
    first = long[long["block"] == long["block"].iloc[0]]
    notes = [entry["note"]] if entry.get("note") else []
    cells = _with_row_text(first, entry)
    return notes + _grouped(cells, "paper_note", len(entry["rows"]), len(first))


def not_run_summary(long: pd.DataFrame, entry: dict) -> list[str]:
    """Cells without a record, grouped by reason."""
    missing = long[long["status"] == NOT_RUN].copy()
    if long["block"].nunique() > 1:
        missing["reason"] = missing["block"] + ": " + missing["reason"]
    cells = _with_row_text(missing, entry)
    return _grouped(cells, "reason", len(entry["rows"]), len(long) // long["block"].nunique())
