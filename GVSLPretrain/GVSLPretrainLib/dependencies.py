"""Which Python packages the backend still needs inside Slicer, without touching the ones Slicer provides.

Slicer ships its own numpy, SimpleITK and VTK (SimpleITK without pip metadata,
so pip would install a second copy), and torch comes from the PyTorch
extension. The backend is therefore installed without dependencies, then its
remaining requirements are installed with the installed numpy pinned.
"""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Iterable

SLICER_PROVIDED = frozenset({"numpy", "simpleitk", "vtk", "torch"})
BACKEND_DISTRIBUTION = "gvsl"


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


def backend_requirements() -> list[str]:
    """The installed backend's own requirements (empty if it is not installed)."""
    try:
        return metadata.requires(BACKEND_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []


def backend_install_target(module_dir: Path) -> str:
    """What to pip-install for the backend: the source tree holding the module (developers), else ``gvsl``."""
    source = Path(module_dir).parent
    return str(source) if (source / "pyproject.toml").exists() else BACKEND_DISTRIBUTION


def pins_of_provided() -> str:
    """Constraints (pip ``-c`` file text) pinning the installed versions of Slicer's own packages."""
    return "".join(f"{name}=={metadata.version(name)}\n" for name in sorted(SLICER_PROVIDED) if _installed(name))
