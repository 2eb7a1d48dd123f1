"""Which Python packages the backend still needs inside Slicer, without touching the ones Slicer provides.

The requirements are read from ``gvsl/requirements.txt``, the one list (pyproject.toml reads it too). It travels
with the backend's files, so it is found wherever ``gvsl`` is: beside the modules in the installed extension, which
holds no package metadata, in a source checkout, in a pip-installed package.

Slicer ships its own numpy, SimpleITK and VTK (SimpleITK without pip metadata, so pip would install a second
copy), and torch comes from the PyTorch extension: those are never installed. The other missing requirements are
installed with Slicer's packages pinned. The backend itself ships with the extension; it is pip-installed (without
dependencies) only from a developer's source checkout whose ``gvsl`` is not importable yet.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

SLICER_PROVIDED = frozenset({"numpy", "simpleitk", "vtk", "torch"})
BACKEND_PACKAGE = "gvsl"
REQUIREMENTS_NAME = "requirements.txt"  # in the backend package folder; pyproject.toml's dynamic dependencies


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``"SimpleITK>=2.3"`` → ``"simpleitk"``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """Requirements (without environment markers that do not apply, extras only) that are neither provided by
    Slicer nor installed."""
    missing = []
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        name = requirement_name(requirement)
        if name not in SLICER_PROVIDED and not _installed(name):
            missing.append(requirement.split(";")[0].strip())
    return missing


def read_requirements(path: Path) -> list[str]:
    """The requirements in a requirements file: its lines less blank and ``#`` comment lines, as setuptools reads
    pyproject.toml's ``dependencies = {file = [...]}``."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass(frozen=True)
class InstallPlan:
    """What the module pip-installs, in order.

    ``backend``: the source tree to install without its dependencies (a developer's checkout whose ``gvsl`` is not
    importable), else None; ``requirements``: the backend's requirements neither provided by Slicer nor installed.
    """

    backend: Optional[str]
    requirements: list[str]

    @property
    def packages(self) -> list[str]:
        """What is missing, as the user is asked to confirm it (empty: nothing to install)."""
        return ([self.backend] if self.backend else []) + self.requirements

    def pip_arguments(self, constraints_file: str) -> list[list[str]]:
        """The arguments of each ``slicer.util.pip_install`` call; ``constraints_file`` holds ``pins_of_provided()``,
        so that pip keeps Slicer's own packages."""
        steps = [["--no-deps", self.backend]] if self.backend else []
        if self.requirements:
            steps.append([*self.requirements, "-c", constraints_file])
        return steps


def install_plan(module_dir: Path) -> InstallPlan:
    """What the backend still needs, for a module file in ``module_dir``.

    The requirements are those of the ``gvsl`` that ``python -m gvsl`` runs: the importable one (the extension's
    copy beside the modules, or a pip-installed one), else the one of the source tree holding the module folder,
    which is then installed too. RuntimeError if there is neither (an extension installed without its backend).
    """
    importlib.invalidate_caches()  # so that a package pip-installed since the last look is found
    spec = importlib.util.find_spec(BACKEND_PACKAGE)  # locates the package without importing it
    if spec is not None and spec.origin is not None:
        package, backend = Path(spec.origin).parent, None
    else:
        source = Path(module_dir).parent
        if not (source / "pyproject.toml").is_file():
            raise RuntimeError(f"The GVSL backend ({BACKEND_PACKAGE}/) is missing beside the module in {module_dir}: "
                               "reinstall the GVSL extension.")
        package, backend = source / BACKEND_PACKAGE, str(source)
    return InstallPlan(backend, missing_requirements(read_requirements(package / REQUIREMENTS_NAME)))


def pins_of_provided() -> str:
    """Constraints (pip ``-c`` file text) pinning the installed versions of Slicer's own packages."""
    return "".join(f"{name}=={metadata.version(name)}\n" for name in sorted(SLICER_PROVIDED) if _installed(name))
