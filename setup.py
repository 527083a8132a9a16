"""Metadata lives in setup.cfg; this file maps the repository's top-level migrations/ into the package.

The migrations/ folder stays where it is in the repository (the project's layout), but a wheel must
carry it: it is installed as the data package `zipstream.migrations` (the *.sql files, no code), which
zipstream.repositories.sql finds through importlib.resources from any working directory. setup.cfg
cannot express the mapping next to `packages = find:`, so the package list is built here.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]), "zipstream.migrations"],
    package_dir={"zipstream.migrations": "migrations"},
    package_data={"zipstream": ["py.typed", "templates/*.html"], "zipstream.migrations": ["*.sql"]},
)
