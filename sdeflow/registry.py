r"""Parts chosen by name: one :class:`Registry` per kind of part, the only list of its names.

A registry maps a name to a *factory* (a class or a function that builds the part) and records,
per entry, the recipe keys the factory reads (``required`` and ``optional``, each a name or a
``name -> type`` mapping) and any extra declarations (e.g. a time grid's random training
grid). The recipe loader derives its choices and its required keys from the registries, so a
part a user registers is selectable from a recipe exactly like a built-in one:

.. code-block:: python

    from sdeflow.nets import NETS

    @NETS.register("my_net", required={"width": int})
    def my_net(spec, shape):
        return MyNet(shape[0], spec["width"])

    # recipe: [drift] net = "my_net", width = 64

The registries of sdeflow live beside their parts: :data:`sdeflow.nets.NETS`,
:data:`sdeflow.grids.GRIDS`, :data:`sdeflow.training.STEPS_SCHEDULES`,
:data:`sdeflow.discretizers.DISCRETIZERS`, :data:`sdeflow.gradients.GRADIENTS`,
:data:`sdeflow.processes.LINEAR_SDES` and :data:`sdeflow.recipes.FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "Entry", "UnknownNameError"]

T = TypeVar("T")
#: Declared recipe keys: names, or ``name -> type`` (a type or a tuple of types).
Keys = Sequence[str] | Mapping[str, type | tuple[type, ...]]


class UnknownNameError(KeyError, ValueError):
    """A name no registry entry has (a ``KeyError`` for mapping-style lookups and a
    ``ValueError`` for a bad argument); its message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered part: its ``name``, ``factory``, the recipe keys it ``required`` and
    the ``optional`` ones (``key -> types``; ``()`` accepts any value), and ``extras``."""

    name: str
    factory: T
    required: dict[str, tuple[type, ...]] = field(default_factory=dict)
    optional: dict[str, tuple[type, ...]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> dict[str, tuple[type, ...]]:
        """Every key the entry reads, required first, with its types."""
        return {**self.required, **self.optional}


def _keys(where: str, keys: Keys) -> dict[str, tuple[type, ...]]:
    if isinstance(keys, str):
        raise TypeError(f"{where} must be a sequence of key names or a mapping key -> type, "
                        f"not the string {keys!r}")
    if isinstance(keys, Mapping):
        items = keys.items()
    else:
        items = ((k, ()) for k in keys)
    out: dict[str, tuple[type, ...]] = {}
    for key, types in items:
        if not isinstance(key, str) or not key:
            raise TypeError(f"{where} must name keys by non-empty strings, got {key!r}")
        out[key] = types if isinstance(types, tuple) else (types,)
    return out


class Registry(Generic[T]):
    r"""Name :math:`\to` factory, for one kind of part.

    Arguments:
        kind: What the entries are, in error messages (``"net"``, ``"discretizer"``).
        key: The recipe key that names an entry (``"drift.net"``), in error messages.

    A registry iterates over its names in registration order and supports ``name in reg``,
    ``reg[name]`` (the factory), ``len``, ``keys``, ``values`` and ``items``, like the
    ``dict`` it replaces.

    Example:
        >>> SHAPES = Registry("shape", key="figure.shape")
        >>> @SHAPES.register("square", required={"side": float})
        ... def square(side):
        ...     return side * side
        >>> SHAPES.names(), SHAPES.get("square")(3.0), SHAPES.required("square")
        (('square',), 9.0, ('side',))
        >>> SHAPES.resolve("square", side=2.0), SHAPES.resolve(None, default=1.5)
        (4.0, 1.5)
        >>> SHAPES.get("circle")
        Traceback (most recent call last):
        ...
        sdeflow.registry.UnknownNameError: figure.shape must be one of square; got 'circle'
    """

    def __init__(self, kind: str, *, key: str | None = None) -> None:
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"kind must be a non-empty string, got {kind!r}")
        self.kind, self.key = kind, key or kind
        self._entries: dict[str, Entry[T]] = {}

    # -- registration ----------------------------------------------------------------------
    def register(self, name: str, factory: T | None = None, *, required: Keys = (),
                 optional: Keys = (), replace: bool = False, **extras: Any) -> Any:
        """Register ``factory`` under ``name``; without ``factory``, a decorator that does.

        Arguments:
            name: The name a recipe or a call uses.
            factory: The class or function that builds the part.
            required: The recipe keys the factory needs (names, or ``name -> type``).
            optional: The recipe keys it may read.
            replace: Allow replacing an entry of the same name (else an error).
            extras: Further declarations of the entry (:attr:`Entry.extras`).

        Returns:
            ``factory``, or the decorator (which returns what it decorates).
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            if not callable(obj):
                raise TypeError(f"the factory of {self.kind} {name!r} must be callable, got "
                                f"{type(obj).__name__}")
            if name in self._entries and not replace:
                raise ValueError(f"a {self.kind} named {name!r} is registered already")
            self._entries[name] = Entry(name, obj, _keys("required", required),
                                        _keys("optional", optional), dict(extras))
            return obj

        return add if factory is None else add(factory)

    def unregister(self, name: str) -> Entry[T]:
        """Remove ``name`` and return its entry (a test's clean-up)."""
        self.entry(name)
        return self._entries.pop(name)

    # -- lookup ------------------------------------------------------------------------------
    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` of ``name``; an :class:`UnknownNameError` lists the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(f"{self.key} must be one of {', '.join(self._entries)}; "
                                   f"got {name!r}") from None

    def get(self, name: str) -> T:
        """The factory of ``name``; an :class:`UnknownNameError` lists the valid names."""
        return self.entry(name).factory

    def required(self, name: str) -> tuple[str, ...]:
        """The recipe keys entry ``name`` needs."""
        return tuple(self.entry(name).required)

    def optional(self, name: str) -> tuple[str, ...]:
        """The recipe keys entry ``name`` may read."""
        return tuple(self.entry(name).optional)

    def key_types(self) -> dict[str, tuple[type, ...]]:
        """Every key some entry reads, with its types (``()``: any; the first declaration
        wins): the schema of the recipe table whose kind this registry names."""
        out: dict[str, tuple[type, ...]] = {}
        for entry in self._entries.values():
            for key, types in entry.keys.items():
                out.setdefault(key, types)
        return out

    def resolve(self, spec: str | Any | None, *, default: str | Any | None = None,
                **kwargs: Any) -> Any:
        """A part from a name (its factory called with ``kwargs``), an instance (returned as
        it is) or ``None`` (``default``, itself a name, an instance or ``None``)."""
        if spec is None:
            return None if default is None else self.resolve(default, **kwargs)
        if isinstance(spec, str):
            return self.get(spec)(**kwargs)
        if kwargs:
            raise TypeError(f"{self.kind}: keyword arguments build a part by name; got an "
                            f"instance {type(spec).__name__} and {sorted(kwargs)}")
        return spec

    # -- the dict it replaces ----------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> tuple[str, ...]:
        return self.names()

    def values(self) -> tuple[T, ...]:
        return tuple(e.factory for e in self._entries.values())

    def items(self) -> tuple[tuple[str, T], ...]:
        return tuple((n, e.factory) for n, e in self._entries.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

