"""Errors the library raises for problems a user can fix.

Every message names the file or object at fault and what is wrong with it, in one
line, so that the CLI and the Slicer module can show it as it is.
"""


class MetaRegistrationError(Exception):
    """Base class of the errors a front end reports as a one-line message."""


class InputError(MetaRegistrationError, ValueError):
    """An input file, array or node is missing, unreadable or inconsistent."""


class CheckpointError(MetaRegistrationError, ValueError):
    """A model checkpoint is missing, tampered with or does not fit the network."""
