"""The one exception type for problems with a user's input.

It is caught at the command-line boundary and printed as one line naming the
file and the reason; the other files of a run still get processed.
"""


class InputError(Exception):
    """An input image (or dataset) that Deepdefacer cannot process."""

    def __init__(self, path, reason):
        self.path = str(path) if path is not None else "<image>"
        self.reason = str(reason)
        super().__init__(f"{self.path}: {self.reason}")


class OutputError(InputError, OSError):
    """An output that cannot be written (no space left, a read-only folder): the user's to fix,
    so it is reported like an input problem, naming the file, never as a traceback. Still an
    OSError, for callers that handle a failed write as one."""


class ModelLoadError(RuntimeError):
    """The model (or the atlas guard's atlas) could not be loaded: nothing can be defaced, and a
    run stops instead of failing every scan the same way."""
