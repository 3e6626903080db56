"""User-facing errors and exit codes shared by every command."""

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1  # the batch ran, but some items failed (listed in the summary)
EXIT_BAD_INPUT = 2  # bad arguments, config, checkpoint or model, an unwritable output, or --strict met a bad item
EXIT_INTERNAL_ERROR = 3  # an unexpected exception: a bug (--debug shows the traceback)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM, where a command closes its files first (128 + SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception (``cli.terminate_as_interrupt``): stop as on Ctrl-C, exit 143."""


class RetinaMaskError(Exception):
    """An error the user can fix: printed as one line naming the file and the cause.

    ``path`` is the offending file (or None); ``cause`` says what is wrong with it.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, cause, path=None):
        self.cause = str(cause)
        self.path = None if path is None else str(path)
        super().__init__(self.cause if self.path is None else f"{self.path}: {self.cause}")


class ConfigError(RetinaMaskError):
    """A config file or override that does not match the config schema."""


class CheckpointError(RetinaMaskError):
    """A checkpoint that cannot be loaded into the model built from the config."""


class InputError(RetinaMaskError):
    """An input item (image, .bin, .info line, inference output) that cannot be used."""


class OutputError(RetinaMaskError):
    """An output that cannot be written (no space left, permission denied, read-only file system)."""


def one_line(error, limit=None):
    """``error``'s text on one line (whitespace runs collapsed), cut to ``limit`` characters when given:
    how a library's multi-line exception is quoted in one of our one-line messages."""
    text = " ".join(str(error).split())
    return text if limit is None else text[:limit]
