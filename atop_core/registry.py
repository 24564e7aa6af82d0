"""A tiny name -> builder registry, so notebooks and the CLI pick parts by string."""

from collections.abc import Callable
from typing import Any


class Registry(dict):
    """Name -> builder, with one error message that lists the valid names."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(builder: Any) -> Any:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = builder
            return builder

        return add

    def get_entry(self, name: str) -> Any:
        """The registered builder or spec; an unknown name lists the known ones."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get_entry(name)(*args, **kwargs)
