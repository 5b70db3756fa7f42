"""The project's error types.

Library code raises these for problems the *user* can fix (bad input files, bad
flags, missing paths). The CLI turns them into one clear line on stderr and a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LQSError(Exception):
    """A user-facing error: the message says what is wrong and, where it can, how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a Slurm preemption or time limit, ``kill``), raised in the main thread by the ``lqs`` command's
    handler so that a run ends as on Ctrl-C: ``finally`` blocks run, the output lock is released."""


class InputError(LQSError):
    """Bad input data, located at ``path:line`` when a line is known.

    >>> str(InputError("invalid JSON: Expecting value", path="a.jsonl", line=3))
    'a.jsonl:3: invalid JSON: Expecting value'
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path, self.line, self.reason = path, line, message
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}" if path else message)
