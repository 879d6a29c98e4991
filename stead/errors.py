"""Errors raised by stead.

Every error stead raises on purpose derives from :class:`SteadError`::

    SteadError
    ├── SettingsError          a setting has a bad value (names the setting)
    ├── SpecError              a tool or agent declaration is invalid (raised at worker start)
    ├── StackError             an embedded service cannot start (port taken, binary missing)
    ├── LedgerError            the ledger cannot be read or written
    ├── RunNotFound            a run id that the Temporal server does not know
    └── DeploymentError        Temporal refused a Worker Deployment change (stead deploy)
        └── DeploymentNotFound no such Worker Deployment or version

Inside workflows and activities failures travel as ``temporalio.exceptions.ApplicationError``
with one of the ``type`` strings below, so the Web UI and retry policies can tell them apart.
"""

from __future__ import annotations


class SteadError(Exception):
    """Base class of every error stead raises on purpose."""


class SettingsError(SteadError):
    """A setting has a bad value; the message names the environment variable."""


class SpecError(SteadError):
    """A tool, agent or registry declaration is invalid."""


class StackError(SteadError):
    """An embedded service could not be started or reached."""


class LedgerError(SteadError):
    """The ledger could not be read or written."""


class RunNotFound(SteadError):
    """No run with this id exists on the Temporal server."""


# ApplicationError.type values used across workflows and activities.
UNKNOWN_AGENT = "UnknownAgent"
BAD_REQUEST = "BadRunRequest"
TOOL_FAILED = "ToolFailed"
TOOL_OUTCOME_UNKNOWN = "ToolOutcomeUnknown"
PAYLOAD_TOO_LARGE = "PayloadTooLarge"
MODEL_NOT_CONFIGURED = "ModelNotConfigured"
"""A pinned model's key is not available on this worker (``ModelEndpoint.api_key_*``)."""
BUDGET_EXCEEDED = "BudgetExceeded"
"""The run's next model call would pass its budget (``Budget``)."""
TENANT_BUDGET_EXCEEDED = "TenantBudgetExceeded"
"""The call would pass its tenant's spending window (per day or per month)."""
OVER_QUOTA = "OverQuota"
"""A tenant is at its cap of runs in flight or starts per minute and refuses new starts."""
MODEL_FALLBACK_KINDS = frozenset({"ModelUnavailable", "ModelServerError", "RateLimited",
                                  "ModelTimeout", "ModelResponseInvalid", "ModelStreamBroken"})
"""Model call failures that hand a turn to the next model of the agent's chain once the model's
attempts are spent: the server is down, failing, rate limiting, too slow, answering garbage or
breaking off its streamed answers.
A rejected request (400/401/403/404) or an oversized answer stays with its model: another one
would be sent the same request."""


class DeploymentError(SteadError):
    """Temporal refused a change of a Worker Deployment's routing (``stead.deployments``)."""


class DeploymentNotFound(DeploymentError):
    """No Worker Deployment, or no version of it, with this name / build id."""
