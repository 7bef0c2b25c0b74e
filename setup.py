"""Package layout that pyproject.toml cannot say alone.

``export/`` (the workstation's export toolchain) and ``kernels/`` (CUDA sources and their
launchers) are top-level folders of the repository, as the product's layout has them, and are
installed as the packages ``edgefs.export`` and ``edgefs.kernels``: setuptools' ``package_dir``
maps them, and their subpackages are found here so that no list of packages is kept by hand.
Everything else (metadata, dependencies, package data) is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

#: Package name -> the top-level folder that holds it.
MAPPED = {"edgefs.export": "export", "edgefs.kernels": "kernels"}

# Namespace packages too: folders of package data (edgefs/serve/static, kernels/emu/include) have no __init__.py.
SKIP = ["*__pycache__*"]
packages = find_namespace_packages(include=["edgefs", "edgefs.*"], exclude=SKIP)
for package, folder in MAPPED.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_namespace_packages(folder, exclude=SKIP)]

setup(packages=packages, package_dir=MAPPED)
