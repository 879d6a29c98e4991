"""Every workflow a stead worker runs: the worker registers them and ``stead replay`` replays
histories against the same tuple.

(A module of its own, not ``workflows/__init__.py``: the sandbox imports a workflow's package
for every run, and one workflow's runs need not import the others.)
"""

from __future__ import annotations

from stead.workflows.agent import AgentWorkflow
from stead.workflows.conversation import ConversationWorkflow
from stead.workflows.drift import DriftWorkflow
from stead.workflows.evaluation import EvaluationWorkflow

__all__ = ["WORKFLOWS"]

WORKFLOWS: tuple[type, ...] = (AgentWorkflow, DriftWorkflow, ConversationWorkflow,
                               EvaluationWorkflow)
"""Every workflow a stead worker runs."""
