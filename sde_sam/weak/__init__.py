"""Weak-error studies (MATH §5), by role: :mod:`.api` (:func:`weak_error`), :mod:`.cells` (one independent
piece of work per cell), :mod:`.exact` (closed-form moments), :mod:`.coupling` (coupled estimates),
:mod:`.estimators` (the selection-free gap, the floor, the order fit), :mod:`.study` (the result object),
:mod:`.figure`, :mod:`.storage` and :mod:`.pilot` (:func:`estimate_cost`: a study's cost, before it starts)."""
from .api import COLUMNS, estimate_cost, weak_error
from .validate import ORDERS
from .cells import DEFAULT_TEST_FUNCTIONS, model_label
from .estimators import FLOOR, MonteCarloFloorError, OrderFit
from .pilot import CellCost, CostEstimate
from .exact import (EXACT_TEST_FUNCTIONS, _linear_model, _linear_recursion, _ou_moments,
                    _quad_expectations)
from .study import WeakErrorStudy

__all__ = ["weak_error", "estimate_cost", "CostEstimate", "CellCost", "WeakErrorStudy", "OrderFit", "MonteCarloFloorError", "FLOOR", "ORDERS", "COLUMNS",
           "DEFAULT_TEST_FUNCTIONS", "EXACT_TEST_FUNCTIONS", "model_label"]
