"""Progress bars that suit where they are drawn.

`ATOP_PROGRESS=auto` (the default): tqdm picks a widget bar in a Jupyter kernel and a text bar in
a terminal. `ATOP_PROGRESS=text`: always a text bar, on standard output. Notebooks executed
headless (papermill, for committing) use `text`: a widget bar saved in a notebook is a model that
nothing draws once its kernel is gone, and a text bar on stderr reads as a warning block.
"""

import sys
from collections.abc import Iterable

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

from atop_core.config import ENV_PROGRESS, settings

PROGRESS_MODES = ("auto", "text")


def progress_mode() -> str:
    mode = settings().progress
    if mode not in PROGRESS_MODES:
        raise ValueError(
            f"{ENV_PROGRESS} must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}; "
            f"unset it or pass one of those"
        )
    return mode


def progress(iterable: Iterable | None = None, **kwargs) -> text_tqdm:
    """A tqdm bar over `iterable` (keywords as tqdm's), drawn as `ATOP_PROGRESS` says."""
    if progress_mode() == "text":
        return text_tqdm(iterable, file=sys.stdout, **kwargs)
    return auto_tqdm(iterable, **kwargs)
