"""Family learners, registered by name (`pmerge train NAME`; registry.MODULES: each imported when its
name is first used)."""
from .registry import FAMILIES, FamilyLearner, LearnContext, Learned, LearnerConfig, get_family_learner, register_family

__all__ = ["FAMILIES", "FamilyLearner", "LearnContext", "Learned", "LearnerConfig", "get_family_learner", "register_family"]
