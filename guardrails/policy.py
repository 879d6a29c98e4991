"""Temporary re-export while the policy models move to ``stead.policy``."""

from stead.policy import *  # noqa: F403
from stead.policy import Policy, PolicyError, load_policy, parse_policy  # noqa: F401
