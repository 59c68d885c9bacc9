"""Errors of the deployment path whose message says everything (entry points print them as one line)."""

from __future__ import annotations


class DeploymentError(RuntimeError):
    """A network cannot be deployed to TFLite Micro as it is; the message names the op and the layer."""
