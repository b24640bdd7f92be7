"""Objectives and their gradient-noise models (MATH §1)."""
from .base import Problem
from .datasets import breast_cancer, breast_cancer_logistic, breast_cancer_mlp, digits, digits_mlp
from .finite_sum import FiniteSum
from .gaussian import Objective, Quadratic, saddle
from .l2 import with_l2
from .module import ModuleFiniteSum, ModuleObjective
from .nets import attention_block, digits_conv
from .zoo import linear_regression, matrix_sensing, mlp, teacher_student

__all__ = ["Problem", "FiniteSum", "Objective", "Quadratic", "saddle", "ModuleFiniteSum", "ModuleObjective",
           "with_l2", "linear_regression", "teacher_student", "mlp", "matrix_sensing",
           "digits", "breast_cancer", "digits_mlp", "breast_cancer_mlp", "breast_cancer_logistic",
           "digits_conv", "attention_block"]
