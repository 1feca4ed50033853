"""The clinician's workflow in a web browser: a trame-slicer app on the MetaRegistration module's Logic.

``metareg app`` starts it (:mod:`.app`); :mod:`.workflow` is what it does, without the web part. The module's
own package (``MetaRegistrationSlicer``) lives beside ``MetaRegistration/MetaRegistration.py``, where 3D Slicer
finds it; it is put on ``sys.path`` here the same way, so that this app imports that one Logic, not a copy.
"""

import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "MetaRegistration"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
