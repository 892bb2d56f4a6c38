"""Checks made before anything is queued, one module per resource, each failing with a
message a person can act on (`RequestProblem`)."""

from api.validation.common import RequestProblem, check_limits, unstorable_text

__all__ = ["RequestProblem", "check_limits", "unstorable_text"]
