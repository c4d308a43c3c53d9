"""The outcome of the discretizer checks: one :class:`CheckResult` per check, a :class:`Report`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["CheckResult", "Report"]

_STATUSES = ("pass", "fail", "skip")


@dataclass
class CheckResult:
    """One check: ``name`` (e.g. ``"strong_order[gbm]"``), ``status`` (``"pass"``, ``"fail"`` or
    ``"skip"``), a readable ``detail``, and the measured ``value`` against ``expected`` where the
    check measures something (an error, an order)."""

    name: str
    status: str
    detail: str
    value: float | None = None
    expected: float | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def __str__(self) -> str:
        return f"{self.status.upper():4}  {self.name}: {self.detail}"


class Report:
    """All check results for one scheme; ``ok`` when none failed.

    Example:
        >>> report = Report("MyScheme", [CheckResult("shapes", "pass", "ok"),
        ...                              CheckResult("strong_order[gbm]", "fail", "off by 0.5")])
        >>> report.ok, [r.name for r in report.failed]
        (False, ['strong_order[gbm]'])
        >>> print(report)
        check_discretizer(MyScheme): FAILED (1 of 2 checks failed)
          PASS  shapes: ok
          FAIL  strong_order[gbm]: off by 0.5
    """

    def __init__(self, scheme: str, results: list[CheckResult]) -> None:
        self.scheme = scheme
        self.results = list(results)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.results]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r}; checks: {self.names}")

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def assert_ok(self) -> None:
        """Raise :class:`AssertionError` with the whole report if any check failed."""
        if not self.ok:
            raise AssertionError("\n" + str(self))

    def __str__(self) -> str:
        n_fail = len(self.failed)
        head = (f"check_discretizer({self.scheme}): "
                + ("ok" if n_fail == 0 else "FAILED")
                + (f" ({n_fail} of {len(self)} checks failed)" if n_fail else f" ({len(self)} "
                   f"checks)"))
        return "\n".join([head] + ["  " + str(r) for r in self.results])

    def __repr__(self) -> str:
        return f"Report(scheme={self.scheme!r}, ok={self.ok}, checks={len(self)})"
