"""Headless training and evaluation front ends (the ``metareg`` and ``metareg-train`` commands), built on
MetaRegistrationLib."""
