"""Typed errors raised by the compression library.

All derive from :class:`ValueError` so that callers that only know
"bad input" can still catch them, while the federation can tell a broken
client payload (:class:`PayloadError`) from its own misconfiguration
(:class:`SpecError`) or a bad local update (:class:`UpdateError`).
"""

from __future__ import annotations

__all__ = ["PayloadError", "SpecError", "UpdateError", "RegistrationError"]


class PayloadError(ValueError):
    """A payload is malformed: truncated, corrupted, oversized or inconsistent.

    This is the only exception :func:`compression.decode` raises for bad bytes,
    so a server can treat any ``PayloadError`` as "reject this client reply".
    """


class SpecError(ValueError):
    """A pipeline specification is invalid (unknown key/stage, bad value)."""


class UpdateError(ValueError):
    """An update given to the encoder is invalid (non-float, non-finite, bad name)."""


class RegistrationError(ValueError):
    """A stage given to :func:`compression.register_stage` is malformed or clashes with a registered one."""
