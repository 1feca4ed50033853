"""Errors the library raises for problems a user can fix.

Every message names the file or object at fault and what is wrong with it, in one
line, so that the CLI and the Slicer module can show it as it is.
"""

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


class MetaRegistrationError(Exception):
    """Base class of the errors a front end reports as a one-line message."""


class InputError(MetaRegistrationError, ValueError):
    """An input file, array or node is missing, unreadable or inconsistent."""


class CheckpointError(MetaRegistrationError, ValueError):
    """A model checkpoint is missing, tampered with or does not fit the network."""


@contextmanager
def naming_the_case(case_id: str) -> Iterator[None]:
    """Prefix ``case ID: `` to a :class:`MetaRegistrationError` raised inside (a sweep's message, for one, names
    no file), unless it already names the case."""
    try:
        yield
    except MetaRegistrationError as error:
        # The same error object, its message prefixed: its type and attributes (a FrameError's frame) stay.
        if not str(error).startswith(f"case {case_id}"):
            error.args = (f"case {case_id}: {error}",)
        raise


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose usage errors are one line, ``PROG: error: MESSAGE (see PROG --help)``, exit 2,
    like every other user error of the commands (argparse's default prints the usage text first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
