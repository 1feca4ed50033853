"""Headless training and evaluation front end (the ``metareg`` command), built on MetaRegistrationLib."""
