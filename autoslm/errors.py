"""Errors that are the user's to fix. The CLI prints them as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the input and says how to fix it."""


class ChecksumError(UserError):
    """A shipped or saved file does not match its recorded sha256 (truncated or tampered)."""
