"""Objectives and their gradient-noise models (MATH §1)."""
from .base import Problem
from .finite_sum import FiniteSum
from .gaussian import Objective, Quadratic, saddle
from .zoo import linear_regression, matrix_sensing, mlp, teacher_student

__all__ = ["Problem", "FiniteSum", "Objective", "Quadratic", "saddle",
           "linear_regression", "teacher_student", "mlp", "matrix_sensing"]
