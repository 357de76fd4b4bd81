"""Maps the top-level folders to zentry.<folder> subpackages (see pyproject.toml)."""
from setuptools import find_packages, setup

FOLDERS = ("actors", "bus", "sentry", "cmd")

packages = []
for folder in FOLDERS:
    packages.append(f"zentry.{folder}")
    packages += [f"zentry.{folder}.{sub}" for sub in find_packages(where=folder)]

setup(packages=packages, package_data={"zentry.actors": ["schema/*.json"]})
