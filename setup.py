"""Maps the top-level folders to zentry.<folder> subpackages (see pyproject.toml)."""
from setuptools import Extension, find_packages, setup

FOLDERS = ("actors", "bus", "sentry", "cmd")

packages = []
for folder in FOLDERS:
    packages.append(f"zentry.{folder}")
    packages += [f"zentry.{folder}.{sub}" for sub in find_packages(where=folder)]

# The sentry's native fast path (sentry/_fast.c). optional: without a compiler
# the install still works and the sentry runs its pure-Python loop; CI builds
# it and tests/integration/test_sentry_native.py fails if it is missing.
fast = Extension("zentry.sentry._fast", ["sentry/_fast.c"], extra_compile_args=["-O2"], optional=True)

setup(packages=packages, package_data={"zentry.actors": ["schema/*.json", "pool/init.c"]}, ext_modules=[fast])
