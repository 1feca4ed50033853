"""The Slicer side of MetaRegistration: MRML nodes in, library objects through, MRML nodes out.

- :mod:`.conversions` is the one place where Slicer's RAS nodes become the
  library's LPS arrays, grids, frames and transforms, and back.
- :mod:`.logic` holds ``MetaRegistrationCoreLogic``, the plain class behind the
  module's Logic: the session, its interactions and their output nodes. It works
  on any ``vtkMRMLScene`` (3D Slicer's, or the ``slicer-core`` wheel's in tests,
  scripts and the web app) and needs no Qt.
- :mod:`.evaluation`: the evaluation panel, TRE across the sweep and a data folder,
  all through ``MetaRegistrationLib.metrics.measure``.
- :mod:`.tables`: table nodes, CSV and node files.
- :mod:`.dependencies`: the one dependency list (``Resources/requirements.txt``),
  checked by version and installed on first use.

Nothing here imports torch or MONAI at module load: the library's numerical
modules (and :mod:`.conversions`, which needs them) are imported on first use,
so that Slicer lists the module before its Python dependencies are installed.
Only the library's torch-free modules (``errors``, ``files``) are imported at the
top of these files.
"""

PACKAGES = ("MetaRegistrationLib", "MetaRegistrationSlicer")
"""The project's packages the module loads; :func:`reloadPackages` imports them again."""


def reloadPackages(packages=PACKAGES) -> list:
    """Import again every loaded module of ``packages`` (for the module's Reload in Developer mode, before Slicer
    reloads MetaRegistration.py), so that an edit to any of them takes effect; returns their names.

    Every module is first forgotten, then imported again in the order it was first imported: each import pulls
    in the fresh version of what it needs, so no module keeps a name bound to a stale one.
    """
    import importlib
    import sys

    names = [name for name in list(sys.modules) if name.split(".")[0] in packages]
    for name in names:
        del sys.modules[name]
    for name in names:
        importlib.import_module(name)
    return names
