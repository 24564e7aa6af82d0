"""What an iterative attack saw at each step, for the attack-failure indicators (Pintor et al.,
"Indicators of Attack Failure", NeurIPS 2022): the loss per step, averaged over the batch,
whether each sample was misclassified at some iterate, and (for attacks that choose which
iterate to return) whether the returned one was.

The EOT losses (`eot.py`) report the logits of every pass to the active trace; the attack loops
(`projected_gradient`, StAdv) mark where each step begins. Outside `tracing()` nothing is kept.
Attacks that do not mark steps (torchattacks' own) leave the trace empty.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor


class AttackTrace:
    """Per-step sums over one batch: cross-entropy (mean over draws) and logits (over draws)."""

    def __init__(self) -> None:
        self.loss: list[float] = []  # per step: mean over the batch of the draws' mean CE
        self.fooled: Tensor | None = None  # (B,) misclassified (mean logits) at some iterate
        self.returned_fooled: Tensor | None = None  # (B,) the returned iterate was misclassified
        self._logits: Tensor | None = None
        self._ce: Tensor | None = None
        self._draws = 0
        self._y: Tensor | None = None
        self._started = False  # passes before the first marked step are not the attack's

    def step(self) -> None:
        """A new iterate begins: close the one before."""
        self._close()
        self._logits = self._ce = None
        self._draws, self._started = 0, True

    def observe(self, logits: Tensor, y: Tensor) -> None:
        """The logits (draws, B, classes) or (B, classes) of one pass at the current iterate."""
        if not self._started:
            return
        logits = logits.detach().float()
        logits = logits if logits.dim() == 3 else logits.unsqueeze(0)
        draws = logits.shape[0]
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(draws), reduction="none")
        ce = ce.view(draws, -1).sum(0)
        summed = logits.sum(0)
        if self._logits is None:
            self._logits, self._ce = summed, ce
        else:
            self._logits, self._ce = self._logits + summed, self._ce + ce
        self._draws += draws
        self._y = y

    def current(self) -> tuple[Tensor, Tensor] | None:
        """The current iterate's per-sample mean CE over its draws and whether the draws' mean
        logits misclassify it, or None before any pass."""
        if self._logits is None or not self._draws:
            return None
        return self._ce / self._draws, self._logits.argmax(-1) != self._y

    def returned(self, fooled: Tensor) -> None:
        """The attack's own view of the iterates it returns: misclassified or not."""
        self.returned_fooled = fooled.detach().cpu()

    def _close(self) -> None:
        if self._logits is None or not self._draws:
            return
        self.loss.append((self._ce / self._draws).mean().item())
        fooled = (self._logits.argmax(-1) != self._y).cpu()
        self.fooled = fooled if self.fooled is None else self.fooled | fooled

    def finish(self) -> dict | None:
        """{"loss": [per step], "fooled": [per sample], "returned_fooled": [per sample] (if the
        attack said)}, or None if no step was marked."""
        self._close()
        self._logits = None
        if not self.loss:
            return None
        out = {"loss": [round(v, 5) for v in self.loss], "fooled": self.fooled.tolist()}
        if self.returned_fooled is not None:
            out["returned_fooled"] = self.returned_fooled.tolist()
        return out


_ACTIVE: ContextVar[AttackTrace | None] = ContextVar("attack_trace", default=None)


@contextmanager
def tracing() -> Iterator[AttackTrace]:
    """Collect the trace of the attacks run inside (one batch)."""
    trace = AttackTrace()
    token = _ACTIVE.set(trace)
    try:
        yield trace
    finally:
        _ACTIVE.reset(token)


@contextmanager
def attack_trace() -> Iterator[AttackTrace]:
    """The active trace, or a private one for an attack that reads its own iterates."""
    trace = _ACTIVE.get()
    if trace is not None:
        yield trace
        return
    with tracing() as trace:
        yield trace


@contextmanager
def untraced() -> Iterator[None]:
    """Passes inside are not part of the attack's trace (e.g. the indicators' own probes)."""
    token = _ACTIVE.set(None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def mark_step() -> None:
    trace = _ACTIVE.get()
    if trace is not None:
        trace.step()


def observe(logits: Tensor, y: Tensor) -> None:
    trace = _ACTIVE.get()
    if trace is not None:
        with torch.no_grad():
            trace.observe(logits, y)
