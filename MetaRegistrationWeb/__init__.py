"""The clinician's workflow in a web browser: a trame-slicer app on the MetaRegistration module's Logic.

``metareg-app`` starts it (:mod:`.command`, :mod:`.app`); :mod:`.workflow` is what it does, without the web part.
It imports the Slicer module's own package (``MetaRegistrationSlicer``, installed from
``MetaRegistration/MetaRegistrationSlicer``), so that this app runs that one Logic, not a copy.
"""
