"""A small registry: one instance per kind of plug-in (data source, trunk, loss, miner).

Configs name plug-ins by string; users add their own by decorating a class or function::

    from fairdml.losses import register

    @register("my_loss")
    class MyLoss(torch.nn.Module): ...

Entries may also be *lazy*: a dotted module path that is imported on first use, so that
``names()`` is cheap and optional dependencies are only imported when needed.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one plug-in kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj and not overwrite:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered "
                    f"(by {self._entries[name]!r}); pass overwrite=True to replace it"
                )
            self._entries[name] = obj
            return obj

        return decorator

    def register_lazy(self, name: str, module: str) -> None:
        """Declare that importing ``module`` registers ``name``."""
        self._lazy[name] = module

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(set(self._entries) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def get(self, name: str) -> T:
        """The factory registered under ``name``; a clear error lists the valid names."""
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._entries:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            )
        return self._entries[name]

    def create(self, name: str, /, *args: Any, context: dict[str, Any] | None = None,
               **params: Any) -> Any:
        """Build the plug-in ``name`` with ``params``.

        ``context`` holds values the caller knows (for example ``num_classes`` and
        ``embedding_dim`` for a loss); each is passed only when the factory's signature
        accepts it, so plug-ins that do not need them need not declare them.
        """
        factory = self.get(name)
        kwargs = dict(params)
        if context:
            accepted = _accepted_parameters(factory)
            for key, value in context.items():
                if key not in kwargs and (accepted is None or key in accepted):
                    kwargs[key] = value
        try:
            return factory(*args, **kwargs)  # type: ignore[operator]
        except TypeError as error:
            accepted = _accepted_parameters(factory)
            unknown = sorted(set(params) - set(accepted)) if accepted is not None else []
            if unknown:
                raise TypeError(
                    f"{self.kind} {name!r} got unknown parameter(s) {unknown}; "
                    f"it accepts: {sorted(accepted)}"
                ) from error
            raise

    def items(self) -> Iterable[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)


def _accepted_parameters(factory: Any) -> set[str] | None:
    """Keyword parameters a callable accepts, or None when it takes ``**kwargs``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY):
            names.add(parameter.name)
    names.discard("self")
    return names
