r"""A test kit for step schemes: Hypothesis strategies and checks to run in your own test suite.

.. code-block:: python

    from sdeflow.testing import check_discretizer
    check_discretizer(MyScheme()).assert_ok()

:func:`check_discretizer` runs every check (shapes and dtypes, transition consistency, the
trajectory identities I1/I2, observed strong and weak orders on GBM and OU problems) and returns a
:class:`Report` naming each failed check and by how much. :mod:`sdeflow.testing.strategies` needs
`Hypothesis <https://hypothesis.readthedocs.io>`_ and is imported on its own.
"""

from sdeflow.testing.checks import (
    check_affine_steps,
    check_discretizer,
    check_shapes,
    check_trajectory_identities,
    check_transition,
    default_processes,
)
from sdeflow.testing.orders import OrderMeasurement, check_orders, fit_order, measure_orders
from sdeflow.testing.problems import GBM, OU, Problem, gbm_problem, ou_problem, reverse_ou_problem
from sdeflow.testing.report import CheckResult, Report

__all__ = [
    "GBM",
    "OU",
    "CheckResult",
    "OrderMeasurement",
    "Problem",
    "Report",
    "check_affine_steps",
    "check_discretizer",
    "check_orders",
    "check_shapes",
    "check_trajectory_identities",
    "check_transition",
    "default_processes",
    "fit_order",
    "gbm_problem",
    "measure_orders",
    "ou_problem",
    "reverse_ou_problem",
]
