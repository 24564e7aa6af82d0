"""Datasets: local image-folder copies (a folder or a zip) first, torchvision's download second.

Images are decoded once into uint8 tensors and cached under the cache folder, keyed by the source's
checksum, so later runs load one file instead of decoding tens of thousands of JPEGs.
"""

import functools
import hashlib
import io
import logging
import urllib.error
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from atop_core.config import ENV_DATA_DIR, settings
from atop_core.io import read_json, save_torch, sha256_file, write_json
from atop_core.progress import progress
from atop_core.registry import Registry

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "test")
CACHE_FORMAT = 1  # bump when the cached tensor layout changes


class DataNotFoundError(FileNotFoundError):
    """No local copy and no torchvision copy could be found or downloaded."""


class DataFormatError(ValueError):
    """A local copy exists but is damaged or does not match the dataset's specification."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset must look like, and where torchvision keeps it."""

    name: str
    classes: tuple[str, ...]  # folder names in torchvision's order
    image_size: int
    test_size: int
    local_splits: dict  # our split name -> the folder name inside the local copy
    torchvision_loader: Callable[[Path, str, bool], Dataset]


DATASETS = Registry("dataset")

CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
# CIFAR-100 fine labels in torchvision's order (alphabetical, as its `classes` attribute lists
# them); a test checks there are 100 of them, sorted.
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab
    crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
    lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
    oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
    possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
    spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
    train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)
IMAGENETTE_CLASSES = tuple(
    "n01440764 n02102040 n02979186 n03000684 n03028079 n03394916 n03417042 n03425413 n03445777 "
    "n03888257".split()
)
# What a reader calls ImageNette's classes (its folders are named by WordNet id)
CLASS_WORDS = dict(
    zip(
        IMAGENETTE_CLASSES,
        "tench|English springer|cassette player|chain saw|church|French horn|garbage truck|"
        "gas pump|golf ball|parachute".split("|"),
        strict=True,
    )
)
IMAGENETTE_SIZE = 128  # the local copy's resolution (docs/data.md); downloads are resized


def _torchvision_cifar(cls_name: str) -> Callable[[Path, str, bool], Dataset]:
    def load(root: Path, split: str, download: bool) -> Dataset:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        return cls(str(root), train=split == "train", download=download)

    return load


def _torchvision_imagenette(root: Path, split: str, download: bool) -> Dataset:
    import torchvision
    from torchvision.transforms import v2

    resize = v2.Resize((IMAGENETTE_SIZE, IMAGENETTE_SIZE), antialias=True)
    return torchvision.datasets.Imagenette(
        str(root),
        split="train" if split == "train" else "val",
        size="160px",
        download=download,
        transform=resize,
    )


for _spec in (
    DatasetSpec(
        "cifar10",
        tuple(CIFAR10_CLASSES),
        32,
        10_000,
        {"train": "train", "test": "test"},
        _torchvision_cifar("CIFAR10"),
    ),
    DatasetSpec(
        "cifar100",
        CIFAR100_CLASSES,
        32,
        10_000,
        {"train": "train", "test": "test"},
        _torchvision_cifar("CIFAR100"),
    ),
    DatasetSpec(
        "imagenette",
        IMAGENETTE_CLASSES,
        IMAGENETTE_SIZE,
        3_925,
        {"train": "train", "test": "val"},
        _torchvision_imagenette,
    ),
):
    DATASETS.register(_spec.name)(_spec)


class ImageTensorDataset(Dataset):
    """Decoded images held as one uint8 tensor (N, C, H, W); items are ([0,1] float, int label).

    `images` and `labels` are public so batched code can index them without a DataLoader.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: tuple[str, ...], source: str):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.classes, self.source = tuple(classes), source

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes in words, for figures (ImageNette's WordNet ids become names)."""
        return tuple(CLASS_WORDS.get(c, c) for c in self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i].float().div_(255), int(self.labels[i])

    def subset(self, indices: list[int] | Tensor) -> "ImageTensorDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.classes, self.source)


# --- local copies: a folder or a zip of <split>/<class>/<image> trees -------------------------


class _LocalTree:
    """Uniform read access to `<split>/<class>/<image>` entries in a folder or a zip."""

    def __init__(self, path: Path):
        self.path = path
        self._opened: zipfile.ZipFile | None = None

    @property
    def _zip(self) -> zipfile.ZipFile | None:
        """The archive, opened on first read: reading a 60,000-member directory takes a second,
        and a cached decode needs only the file's checksum."""
        if self._opened is None and self.path.is_file():
            try:
                self._opened = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataFormatError(
                    f"{self.path} is not a readable zip archive ({err}); replace it with an intact "
                    "copy"
                ) from err
        return self._opened

    def image_names(self, split: str) -> list[str]:
        if self._zip is not None:
            names = self._zip.namelist()
        else:
            root = self.path
            names = [
                p.relative_to(root).as_posix() for p in (root / split).rglob("*") if p.is_file()
            ]
        # Some archives put the tree one folder down (<name>/<split>/...); accept both.
        picked = [n for n in names if _split_of(n) == split and n.lower().endswith(IMAGE_SUFFIXES)]
        return sorted(picked, key=lambda n: PurePosixPath(n).parts[-2:])

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            try:
                return self._zip.read(name)
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                raise DataFormatError(
                    f"{self.path}: member {name} is corrupt ({err}); "
                    "replace the archive with an intact copy"
                ) from err
        return (self.path / name).read_bytes()

    def checksum(self) -> str:
        if self.path.is_file():
            return _file_sha256(self.path, *_stamp(self.path))
        h = hashlib.sha256()  # a folder: names and sizes, cheap and enough to notice a change
        for p in sorted(self.path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(self.path).as_posix()}:{p.stat().st_size}\n".encode())
        return h.hexdigest()

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """An archive's SHA-256, once per process while its size and time stamp are unchanged."""
    return sha256_file(path)


def _split_of(name: str) -> str | None:
    parts = PurePosixPath(name).parts
    return parts[-3] if len(parts) >= 3 else None


def _local_candidates(spec: DatasetSpec, root: Path) -> Iterator[Path]:
    yield root / f"{spec.name}.zip"
    yield root / spec.name
    if root.is_file() or (root / spec.local_splits["train"]).is_dir():
        yield root  # the argument is the archive or the tree itself


def _decode_local(spec: DatasetSpec, tree: _LocalTree, split: str) -> ImageTensorDataset:
    folder = spec.local_splits[split]
    names = tree.image_names(folder)
    if not names:
        raise DataFormatError(
            f"{tree.path} holds no images under '{folder}/<class>/'; expected "
            f"the layout of docs/data.md"
        )
    found = sorted({PurePosixPath(n).parts[-2] for n in names})
    if tuple(found) != tuple(sorted(spec.classes)):
        raise DataFormatError(
            f"{tree.path} '{folder}/' has {len(found)} class folders, but {spec.name} has "
            f"{len(spec.classes)}; unexpected: {sorted(set(found) - set(spec.classes))[:5]}, "
            f"missing: {sorted(set(spec.classes) - set(found))[:5]}"
        )
    index = {c: i for i, c in enumerate(spec.classes)}
    size = spec.image_size
    images = torch.empty((len(names), 3, size, size), dtype=torch.uint8)
    labels = torch.empty(len(names), dtype=torch.long)
    for i, name in enumerate(progress(names, desc=f"decode {spec.name}/{split}", leave=False)):
        images[i] = _decode_image(tree, name, size)
        labels[i] = index[PurePosixPath(name).parts[-2]]
    return ImageTensorDataset(images, labels, spec.classes, f"local:{tree.path}")


def _decode_image(tree: _LocalTree, name: str, size: int) -> Tensor:
    try:
        with Image.open(io.BytesIO(tree.read(name))) as im:
            array = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataFormatError(f"{tree.path}: cannot decode {name} ({err})") from err
    if array.shape[:2] != (size, size):
        raise DataFormatError(
            f"{tree.path}: {name} is {array.shape[1]}x{array.shape[0]}, expected {size}x{size}"
        )
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


# --- the cache ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _read_cache(cache_file: Path, size: int, mtime_ns: int) -> dict:
    """A decoded cache file, read once per process while it is unchanged (evaluations load the
    test split for every record); callers only index its tensors."""
    return torch.load(cache_file, map_location="cpu", weights_only=True)


def _cached(
    cache_file: Path, source: str, build: Callable[[], ImageTensorDataset]
) -> ImageTensorDataset:
    if cache_file.exists():
        blob = _read_cache(cache_file, *_stamp(cache_file))
        if blob.get("format") == CACHE_FORMAT:
            return ImageTensorDataset(
                blob["images"], blob["labels"], tuple(blob["classes"]), source
            )
        log.warning("ignoring cache %s of another format", cache_file)
    ds = build()
    save_torch(
        cache_file,
        {
            "format": CACHE_FORMAT,
            "images": ds.images,
            "labels": ds.labels,
            "classes": list(ds.classes),
        },
    )
    return ds


def _load_local(spec: DatasetSpec, path: Path, split: str, cache_dir: Path) -> ImageTensorDataset:
    tree = _LocalTree(path)
    try:
        key = tree.checksum()[:16]
        cache_file = cache_dir / "decoded" / f"{spec.name}-{split}-{key}.pt"
        return _cached(cache_file, f"local:{path}", lambda: _decode_local(spec, tree, split))
    finally:
        tree.close()


def _load_torchvision(
    spec: DatasetSpec, split: str, root: Path, download: bool
) -> ImageTensorDataset:
    ds = spec.torchvision_loader(root, split, download)
    cache_file = root / "decoded" / f"{spec.name}-{split}-torchvision.pt"

    def build() -> ImageTensorDataset:
        pairs = [
            ds[i]
            for i in progress(range(len(ds)), desc=f"convert {spec.name}/{split}", leave=False)
        ]
        images = torch.stack(
            [
                torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
                if isinstance(im, Image.Image)
                else im
                for im, _ in pairs
            ]
        )
        labels = torch.tensor([int(y) for _, y in pairs])
        return ImageTensorDataset(images, labels, spec.classes, "torchvision")

    return _cached(cache_file, "torchvision", build)


def load_dataset(
    name: str, split: str, root: str | Path | None = None, download: bool | None = None
) -> ImageTensorDataset:
    """A dataset split as (C×H×W float in [0,1], int label) items, classes in torchvision order.

    Looks in `root` (else $ATOP_DATA_DIR) for `<name>.zip` or `<name>/` holding
    `<split>/<class>/<image>` trees; then in torchvision's folder under the cache, downloading
    there when `download` is True, or None (try, and explain if offline). ImageNette's `val` is
    its `test`.
    """
    spec = DATASETS.get_entry(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    env = settings()
    local_root = Path(root).expanduser() if root is not None else env.data_dir
    looked: list[str] = []
    if local_root is not None:
        for candidate in _local_candidates(spec, local_root):
            looked.append(str(candidate))
            if candidate.exists():
                return _load_local(spec, candidate, split, env.cache_dir)
    tv_root = env.cache_dir / "torchvision"
    looked.append(f"{tv_root} (torchvision)")
    try:
        return _load_torchvision(spec, split, tv_root, download=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        pass
    if download is not False:
        try:
            return _load_torchvision(spec, split, tv_root, download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            looked.append(f"download failed: {err}")
    raise DataNotFoundError(
        f"no copy of {name}/{split} found. Looked in: {'; '.join(looked)}. Fix: set {ENV_DATA_DIR} "
        f"(or pass root= / --data-dir) to a folder holding {name}.zip or {name}/ as described in "
        f"docs/data.md, or go online and pass download=True."
    )


def unavailable_reason(name: str, brief: bool = False) -> str | None:
    """None when both splits of dataset `name` load here, else why not (no local copy while
    offline, a malformed copy): the one check every command and report uses. `brief` leaves
    out the folders searched on this machine (for the committed report)."""
    try:
        for split in SPLITS:
            load_dataset(name, split)
    except DataNotFoundError as err:
        if brief:
            return f"no copy of {name} found and none downloaded (docs/data.md: where to put one)"
        return str(err)
    except DataFormatError as err:
        return str(err)
    return None


def shrink(ds: ImageTensorDataset, max_size: int) -> ImageTensorDataset:
    """`ds` with images larger than `max_size` resized down to it (antialiased bilinear, rounded
    back to uint8); unchanged when max_size is 0 or the images are no larger."""
    if not max_size or ds.images.shape[-1] <= max_size:
        return ds
    images = _shrunk(ds.images, max_size)
    return ImageTensorDataset(images, ds.labels, ds.classes, f"{ds.source} at {max_size} px")


@functools.lru_cache(maxsize=4)
def _shrunk(images: Tensor, max_size: int) -> Tensor:
    """Keyed by the tensor itself (its identity): the memoised decoded split is the same object
    on every load, so evaluations resize it once per process, not once per record."""
    small = torch.cat(
        [
            F.interpolate(chunk.float(), size=max_size, mode="bilinear", antialias=True)
            for chunk in images.split(1024)
        ]
    )
    return small.round().clamp(0, 255).to(torch.uint8)


# --- fixed evaluation subsets ------------------------------------------------------------------


def eval_indices(
    name: str, n: int, seed: int = 0, size: int | None = None, save_dir: Path | None = None
) -> list[int]:
    """`n` sorted test indices drawn without replacement, the same on every machine.

    The list is saved once as `indices/<name>-test<size>-n<n>-seed<seed>.json` with its SHA-256;
    a later call checks the file against a fresh draw and refuses one that disagrees.
    `size` defaults to the canonical test-split size.
    """
    spec = DATASETS.get_entry(name)
    size = spec.test_size if size is None else size
    if not 1 <= n <= size:
        raise ValueError(f"n must be in [1, {size}] for {name}/test, got {n}")
    # numpy's PCG64 stream is fixed by its seed on every platform, unlike torch's CUDA generators.
    drawn = sorted(int(i) for i in np.random.default_rng(seed).choice(size, size=n, replace=False))
    path = (save_dir or settings().indices_dir) / f"{name}-test{size}-n{n}-seed{seed}.json"
    record = {
        "dataset": name,
        "split": "test",
        "size": size,
        "n": n,
        "seed": seed,
        "sha256": indices_sha256(drawn),
        "indices": drawn,
    }
    if path.exists():
        saved = read_json(path)
        if saved.get("indices") != drawn or saved.get("sha256") != record["sha256"]:
            raise DataFormatError(
                f"{path} disagrees with a fresh draw for seed {seed}; delete it "
                "to regenerate, or restore it from version control"
            )
    else:
        write_json(path, record)
    return drawn


def eval_subset(
    name: str, test: ImageTensorDataset, n: int, seed: int = 0
) -> tuple[ImageTensorDataset, list[int]]:
    """The fixed evaluation subset of a loaded test split (`n` capped at its size), and its
    indices: the one way every stage picks the images it evaluates on."""
    indices = eval_indices(name, min(n, len(test)), seed, size=len(test))
    return test.subset(indices), indices


def indices_sha256(indices: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()
