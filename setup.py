"""The one thing pyproject.toml cannot say: the shared config tree stays at the top of the repository
as conf/ and ships inside the distribution as the package `framework.conf` (framework/config.py finds it).
Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

conf_packages = ["framework.conf" + name.removeprefix("conf") for name in find_namespace_packages(include=["conf", "conf.*"])]
setup(
    packages=find_namespace_packages(include=["framework", "framework.*", "plugins", "plugins.*"]) + conf_packages,
    package_dir={"framework.conf": "conf"},
)
