"""The Slicer side of MetaRegistration: MRML nodes in, library objects through, MRML nodes out.

- :mod:`.conversions` is the one place where Slicer's RAS nodes become the
  library's LPS arrays, grids, frames and transforms, and back.
- :mod:`.logic` holds ``MetaRegistrationCoreLogic``, the plain class behind the
  module's Logic: it works on any ``vtkMRMLScene`` (3D Slicer's, or the
  ``slicer-core`` wheel's in tests and scripts) and needs no Qt.

Nothing here imports torch at module load: ``.logic`` imports ``.conversions``
(and through it the torch-based library) on first use, so that Slicer lists the
module before its Python dependencies are installed.
"""
