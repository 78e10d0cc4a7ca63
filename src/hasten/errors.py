"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class HastenError(Exception):
    """A problem with the user's input that they can fix; the message names the problem and the fix."""

    exit_code = 2


class ConfigError(HastenError):
    """An invalid, unknown or contradictory configuration value."""


class DataError(HastenError):
    """A corpus or tokenizer problem (empty, unreadable, too short)."""


class CheckpointError(HastenError):
    """A missing, corrupt or incompatible checkpoint."""
