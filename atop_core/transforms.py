"""The random transforms RT1, RT2, RT3: noise and block masks destroy a perturbation.

A transform turns a batch into K masked copies (K = 1, or N for RT3) plus their keep-masks; the
purifier fills every copy, and `combine` merges the fills back into one image per sample. All
randomness comes from a `torch.Generator` the transform owns, one per device: attacks and
notebooks reseed the global generator, and a defense drawing from it would be frozen or correlated
with its attacker.
"""

import torch
from torch import Tensor, nn

from atop_core.config import TransformConfig


def _check_grid(size: int, grid: int) -> None:
    if size % grid:
        raise ValueError(
            f"grid {grid} does not divide the image size {size}; choose a grid that "
            f"divides it (the default 8 suits 32, 128 and 256)"
        )


def _blocks_to_pixels(blocks: Tensor, size: int) -> Tensor:
    """(n, grid*grid) block values -> (n, 1, size, size) pixel values (blocks are square)."""
    n, count = blocks.shape
    grid = round(count**0.5)
    scale = size // grid
    return (
        blocks.view(n, 1, grid, 1, grid, 1)
        .expand(n, 1, grid, scale, grid, scale)
        .reshape(n, 1, size, size)
    )


def _block_ranks(n: int, grid: int, g: torch.Generator, device: torch.device) -> Tensor:
    """(n, grid*grid) a uniformly random permutation rank of each block, one per row."""
    keys = torch.rand((n, grid * grid), generator=g, device=device)
    return keys.argsort(dim=1).argsort(dim=1)


def block_mask(
    n: int,
    size: int,
    grid: int,
    rate: float,
    g: torch.Generator,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(n, 1, size, size) keep-mask (1 kept, 0 missing) with exactly round(rate·grid²) blocks
    missing in every sample, drawn independently per sample."""
    _check_grid(size, grid)
    missing = round(rate * grid * grid)
    keep = (_block_ranks(n, grid, g, torch.device(device)) >= missing).float()
    return _blocks_to_pixels(keep, size)


def partition_masks(
    n: int, size: int, grid: int, parts: int, g: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """(parts, n, 1, size, size) keep-masks whose missing blocks partition the grid: every block is
    missing in exactly one of the `parts` masks (sizes differ by at most one block)."""
    _check_grid(size, grid)
    group = _block_ranks(n, grid, g, torch.device(device)) * parts // (grid * grid)
    keeps = torch.stack([(group != i).float() for i in range(parts)])
    return _blocks_to_pixels(keeps.view(parts * n, -1), size).view(parts, n, 1, size, size)


class RandomTransform(nn.Module):
    """t(x): [0,1] images (B, C, H, W) -> K masked copies (K·B, C, H, W), keep-masks (K·B, 1, H, W).

    Copies are laid out copy-major (copy k of sample b is row k·B + b). Missing pixels are 0.
    """

    def __init__(self, cfg: TransformConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def copies(self) -> int:
        return self.cfg.n_masks if self.cfg.kind == "rt3" else 1

    def seed(self, seed: int | None = None) -> None:
        """Restart every random stream (from `seed`, or the construction seed)."""
        self._seed = self._seed if seed is None else seed
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cfg, (b, _, h, w) = self.cfg, x.shape
        if h != w:
            raise ValueError(f"images must be square for block masks, got {h}x{w}")
        g = self._generator(x.device)
        draws = b if cfg.per_sample else 1  # one mask and noise for the whole batch, if asked
        if cfg.kind in ("rt2", "rt3") and cfg.noise_std > 0:
            noise = torch.randn((draws, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
            x = (x + cfg.noise_std * noise).clamp(0.0, 1.0)
        if cfg.kind == "none":
            return x, torch.ones_like(x[:, :1])
        if cfg.fixed_mask:  # the same mask every call: from its own seed, not the stream
            draws, g = 1, torch.Generator(device=x.device).manual_seed(cfg.mask_seed)
        if cfg.kind == "rt3" and cfg.partition:
            keep = partition_masks(draws, h, cfg.grid, cfg.n_masks, g, x.device)
        else:
            keep = torch.stack(
                [
                    block_mask(draws, h, cfg.grid, cfg.missing_rate, g, x.device)
                    for _ in range(self.copies)
                ]
            )
        keep = keep.to(x.dtype).expand(self.copies, b, 1, h, w).reshape(self.copies * b, 1, h, w)
        copies = x.repeat(self.copies, 1, 1, 1)
        return copies * keep, keep

    def combine(self, filled: Tensor, keep: Tensor) -> Tensor:
        """Merge the purifier's K fills (K·B, C, H, W) into B images.

        K = 1: the fill itself. RT3 with a partition: x̂ = Σ_i m_i ⊙ g(t_i(x)), m_i the missing
        region of copy i (Σ_i m_i = 1). RT3 with independent masks: each pixel averages the fills of
        the copies that had it missing; a pixel missing in no copy averages all fills.
        """
        k = self.copies
        if k == 1:
            return filled
        filled = filled.view(k, -1, *filled.shape[1:])
        missing = 1.0 - keep.view(k, -1, *keep.shape[1:])
        if self.cfg.partition:
            return (missing * filled).sum(0)
        covered = missing.sum(0)
        mean_of_missing = (missing * filled).sum(0) / covered.clamp(min=1.0)
        return torch.where(covered > 0, mean_of_missing, filled.mean(0))
