"""Family learners, registered by name (`pmerge train --method NAME`). Import order is listing order."""
from .registry import FAMILIES, FamilyLearner, LearnContext, LearnerConfig, get_family_learner, register_family
from . import pareto, ta_pref, adamerging_pref, map, hm3, react  # noqa: F401  (registers)

__all__ = ["FAMILIES", "FamilyLearner", "LearnContext", "LearnerConfig", "get_family_learner", "register_family"]
