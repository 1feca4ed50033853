"""MetaRegistrationLib: headless MR-to-TRUS registration with meta-learned networks.

No Slicer, Qt or VTK imports here: the Slicer module, the training package and the
command line all build on this library. The coordinate convention used everywhere
is written down once, in :mod:`MetaRegistrationLib.geometry`.
"""

__version__ = "0.1.0"
