"""Finds the packages: `lmdeploy` is src/ and `lmdeploy.kernels` is lmdeploy_kernels/ (package-dir in
pyproject.toml). setuptools' own `find` names a package by its folders, so it cannot say that
src/adapters is `lmdeploy.adapters`; everything else is declared in pyproject.toml."""

from setuptools import find_packages, setup


def packages_under(name: str, folder: str) -> list[str]:
    return [name, *(f"{name}.{sub}" for sub in find_packages(folder))]


setup(packages=packages_under("lmdeploy", "src") + packages_under("lmdeploy.kernels", "lmdeploy_kernels"))
