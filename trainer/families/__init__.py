"""Family learners, registered by name (`pmerge train NAME`). Import order is listing order."""
from .registry import FAMILIES, FamilyLearner, LearnContext, Learned, LearnerConfig, get_family_learner, register_family
from .pareto import learner as _pm  # noqa: F401  (each import registers its learners)
from .ta_pref import learner as _ta_pref  # noqa: F401
from .adamerging_pref import learner as _adamerging_pref  # noqa: F401
from .map import learner as _map  # noqa: F401
from .hm3 import learner as _hm3  # noqa: F401
from .react import learner as _react  # noqa: F401

__all__ = ["FAMILIES", "FamilyLearner", "LearnContext", "Learned", "LearnerConfig", "get_family_learner", "register_family"]
