"""Settings read from the environment (once, here) and the named run profiles.

Every stage takes its configuration as a frozen dataclass; `get_profile("quick", eot=8)` makes a
changed copy and refuses bad values with a message naming the field.
"""

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent

ENV_DATA_DIR = "ATOP_DATA_DIR"  # folder holding local dataset copies (shared/data/README.md)
ENV_CACHE_DIR = "ATOP_CACHE_DIR"  # where decoded datasets and torchvision downloads are kept
ENV_HOME = "ATOP_HOME"  # where indices/, checkpoints/, results/, figures/ and tables/ live


@dataclass(frozen=True)
class Settings:
    """Locations on this machine. Built from the environment by `settings()`."""

    data_dir: Path | None
    cache_dir: Path
    home: Path

    @property
    def indices_dir(self) -> Path:
        return self.home / "indices"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def results_dir(self) -> Path:
        return self.home / "results"


def _default_home() -> Path:
    # In a source checkout (the usual, editable install) artifacts live beside the package.
    checkout = PACKAGE_DIR.parent
    return checkout if (checkout / "pyproject.toml").exists() else Path.cwd()


def settings() -> Settings:
    """Read the ATOP_* environment variables; unset ones take their documented defaults."""
    data_dir = os.environ.get(ENV_DATA_DIR) or None
    xdg_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Settings(
        data_dir=Path(data_dir).expanduser() if data_dir else None,
        cache_dir=Path(os.environ.get(ENV_CACHE_DIR) or xdg_cache / "atop_core").expanduser(),
        home=Path(os.environ.get(ENV_HOME) or _default_home()).expanduser(),
    )


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; any other name is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def config_hash(cfg: object, length: int = 12) -> str:
    """A stable short hash of a dataclass, used to name the artifacts it produces."""
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class DataConfig:
    """How much of a dataset a profile uses; 0 means the whole split."""

    train_subset: int = 0
    n_eval: int = 512  # DESIGN §4: 512 fixed test images at the paper profile
    eval_seed: int = 0

    def __post_init__(self) -> None:
        _require(self.train_subset >= 0, f"train_subset must be >= 0, got {self.train_subset}")
        _require(self.n_eval >= 1, f"n_eval must be >= 1, got {self.n_eval}")


TRANSFORM_KINDS = ("none", "rt1", "rt2", "rt3")


@dataclass(frozen=True)
class TransformConfig:
    """The random transform t (DESIGN §3; values from the authors' code, ATOP_PAPER §1.2)."""

    kind: str = "rt2"  # none | rt1 (mask) | rt2 (noise, then mask) | rt3 (noise, then N masks)
    noise_std: float = 0.25  # on the [0,1] scale; rt2 and rt3 only
    missing_rate: float = 0.25  # fraction of grid blocks removed from each copy
    grid: int = 8  # blocks per side, whatever the resolution (32-px blocks at 256, 4-px at 32)
    n_masks: int = 4  # rt3: copies, each purified; only their filled blocks are combined
    partition: bool = True  # rt3: the N masks partition the blocks (needs missing_rate = 1/N)
    per_sample: bool = True  # False: one mask and noise per batch, as the authors' code drew

    def __post_init__(self) -> None:
        _require(
            self.kind in TRANSFORM_KINDS,
            f"unknown transform kind {self.kind!r}; known: {', '.join(TRANSFORM_KINDS)}",
        )
        _require(
            0.0 <= self.missing_rate < 1.0,
            f"missing_rate must be in [0, 1), got {self.missing_rate}",
        )
        _require(self.noise_std >= 0.0, f"noise_std must be >= 0, got {self.noise_std}")
        _require(self.grid >= 1, f"grid must be >= 1 block per side, got {self.grid}")
        _require(self.n_masks >= 1, f"n_masks (N) must be >= 1, got {self.n_masks}")
        if self.kind == "rt3" and self.partition:
            _require(
                abs(self.missing_rate * self.n_masks - 1.0) < 1e-9,
                f"rt3 masks that partition the blocks need missing_rate = 1/n_masks = "
                f"{1 / self.n_masks:g}, got {self.missing_rate}; set partition=False for "
                "N independent masks",
            )


@dataclass(frozen=True)
class Profile:
    """A named scale for the whole pipeline (DESIGN §5)."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    datasets: tuple[str, ...] = ("cifar10", "cifar100", "imagenette")

    def __post_init__(self) -> None:
        _require(bool(self.name), "profile name must not be empty")


SMOKE = Profile("smoke", data=DataConfig(train_subset=256, n_eval=16))
QUICK = Profile("quick", data=DataConfig(train_subset=0, n_eval=512))
PAPER = Profile("paper", data=DataConfig(train_subset=0, n_eval=512))
PROFILES = {p.name: p for p in (SMOKE, QUICK, PAPER)}


def get_profile(name: str, **overrides: object) -> Profile:
    """The named profile, with top-level fields replaced by `overrides` (validated)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return dataclasses.replace(PROFILES[name], **overrides) if overrides else PROFILES[name]
