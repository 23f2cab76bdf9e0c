"""Errors meant for people.

Every error osp raises on bad input derives from :class:`OspError` and carries one sentence that
names the offending field, file or tensor. The CLI prints that sentence and exits with status 2; it
never shows a traceback for these.
"""


class OspError(Exception):
    """Base class of the errors osp reports to users."""


class ConfigError(OspError, ValueError):
    """A config file or value is invalid; the message names the field path."""


class ShapeError(OspError, ValueError):
    """A tensor has a shape a model cannot take; the message says which dimension and why."""


class VideoReadError(OspError, OSError):
    """A video or image file cannot be read; the message names the file."""


class WeightsError(OspError, OSError):
    """A weights folder or checkpoint cannot be loaded; the message names the file."""
