"""Which Python packages the backend still needs inside Slicer, at the versions it needs, without touching the ones
Slicer provides.

The requirements are read from ``gvsl/requirements.txt``, the one list (pyproject.toml reads it too). It travels
with the backend's files, so it is found wherever ``gvsl`` is: beside the modules in the installed extension, which
holds no package metadata, in a source checkout, in a pip-installed package.

Slicer ships its own numpy, SimpleITK and VTK (SimpleITK without pip metadata, so pip would install a second
copy), and torch comes from the PyTorch extension: those are never pip-installed. Every requirement's version range
is checked (torch, monai and SimpleITK included) from the installed distributions' metadata, without importing them:
torch missing or out of range is installed by the PyTorch extension with the range, the other missing or
out-of-range requirements are pip-installed with Slicer's packages pinned, and a package that Slicer itself ships out
of range (SimpleITK, numpy) cannot be fixed here: it is reported. Replacing a package that Slicer's process has
already imported needs a restart (``InstallPlan.restart_needed``). The backend itself ships with the extension; it
is pip-installed (without dependencies) only from a developer's source checkout whose ``gvsl`` is not importable yet.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

SLICER_PROVIDED = frozenset({"numpy", "simpleitk", "vtk", "torch"})
TORCH = "torch"  # installed through the PyTorch extension (PyTorchUtils), with its version range
BACKEND_PACKAGE = "gvsl"
REQUIREMENTS_NAME = "requirements.txt"  # in the backend package folder; pyproject.toml's dynamic dependencies


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``"SimpleITK>=2.3"`` → ``"simpleitk"``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


# Slicer's own packages by import name: Slicer's SimpleITK has no pip metadata, so its version is read off the module
# (which Slicer and the modules import anyway; torch is never imported here).
PROVIDED_MODULES = {"numpy": "numpy", "simpleitk": "SimpleITK", "vtk": "vtk"}


def installed_version(name: str) -> Optional[str]:
    """The installed version of a distribution (from its metadata; for Slicer's own packages without metadata, from
    the module's ``__version__``), None if not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name not in PROVIDED_MODULES or importlib.util.find_spec(PROVIDED_MODULES[name]) is None:
            return None
        return str(getattr(importlib.import_module(PROVIDED_MODULES[name]), "__version__", None) or "") or None


def version_range(requirement: str) -> str:
    """The version specifier of a requirement (``"torch>=2.2,<3"`` → ``">=2.2,<3"``; empty when there is none)."""
    return requirement.split(";")[0].strip()[len(re.match(r"\s*[A-Za-z0-9._-]+", requirement).group(0)):].strip()


def in_range(version: str, specifier: str) -> bool:
    """Whether ``version`` satisfies ``specifier`` (PEP 440, as pip decides; imported only when there is a version
    to compare)."""
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(specifier).contains(version, prereleases=True)


@dataclass(frozen=True)
class Problem:
    """A requirement that is not met: not installed (``installed`` None) or installed at a version out of range."""

    requirement: str
    installed: Optional[str]

    @property
    def name(self) -> str:
        return requirement_name(self.requirement)

    def describe(self) -> str:
        state = "not installed" if self.installed is None else f"installed: {self.installed}"
        return f"{self.requirement} ({state})"


def requirement_problems(requirements: Iterable[str]) -> list[Problem]:
    """The requirements (environment markers dropped, extras' ones skipped) that are missing or out of range."""
    problems = []
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        requirement = requirement.split(";")[0].strip()
        version = installed_version(requirement_name(requirement))
        specifier = version_range(requirement)
        if version is None or (specifier and not in_range(version, specifier)):
            problems.append(Problem(requirement, version))
    return problems


def read_requirements(path: Path) -> list[str]:
    """The requirements in a requirements file: its lines less blank and ``#`` comment lines, as setuptools reads
    pyproject.toml's ``dependencies = {file = [...]}``."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass(frozen=True)
class InstallPlan:
    """What the module installs, in order, once the user confirmed it.

    ``backend``: the source tree to install without its dependencies (a developer's checkout whose ``gvsl`` is not
    importable), else None; ``problems``: the backend's requirements that are missing or out of range.
    """

    backend: Optional[str]
    problems: list[Problem]

    @property
    def torch(self) -> Optional[Problem]:
        """torch's problem (installed by the PyTorch extension with ``version_range``), None when it is fine."""
        return next((p for p in self.problems if p.name == TORCH), None)

    @property
    def requirements(self) -> list[str]:
        """What pip installs: the requirements with a problem that Slicer does not provide."""
        return [p.requirement for p in self.problems if p.name not in SLICER_PROVIDED]

    @property
    def unfixable(self) -> list[Problem]:
        """Problems of packages that Slicer itself ships (SimpleITK, numpy, VTK): another Slicer version is needed."""
        return [p for p in self.problems if p.name in SLICER_PROVIDED and p.name != TORCH]

    @property
    def installable(self) -> list[Problem]:
        """The problems this plan fixes: torch's and the pip-installed requirements'."""
        return [p for p in self.problems if p not in self.unfixable]

    @property
    def packages(self) -> list[str]:
        """What pip installs, the backend first (empty: nothing to pip-install)."""
        return ([self.backend] if self.backend else []) + self.requirements

    def confirmation_lines(self) -> list[str]:
        """One line per thing to install, as the user is asked to confirm them all at once."""
        backend = [f"{self.backend} (the GVSL backend)"] if self.backend else []
        return backend + [p.describe() for p in self.installable]

    def restart_needed(self, loaded_modules: Iterable[str]) -> list[str]:
        """The installed packages this plan replaces whose modules Slicer's process has imported (``loaded_modules``,
        e.g. ``sys.modules``): Slicer must restart before it uses the new versions."""
        replaced = {p.name for p in self.installable if p.installed is not None}
        distributions = metadata.packages_distributions()
        loaded = {requirement_name(dist) for module in {name.split(".")[0] for name in loaded_modules}
                  for dist in distributions.get(module, [])}
        return sorted(replaced & loaded)

    def pip_arguments(self, constraints_file: str) -> list[list[str]]:
        """The arguments of each ``slicer.util.pip_install`` call; ``constraints_file`` holds ``pins_of_provided()``,
        so that pip keeps Slicer's own packages."""
        steps = [["--no-deps", self.backend]] if self.backend else []
        if self.requirements:
            steps.append([*self.requirements, "-c", constraints_file])
        return steps


def install_plan(module_dir: Path, extra: Iterable[str] = ()) -> InstallPlan:
    """What the backend still needs, for a module file in ``module_dir``, with the ``extra`` requirements of the
    action asking (e.g. the sample data's, ``samples.SAMPLE_REQUIREMENTS``).

    The requirements are those of the ``gvsl`` that ``python -m gvsl`` runs: the importable one (the extension's
    copy beside the modules, or a pip-installed one), else the one of the source tree holding the module folder,
    which is then installed too. RuntimeError if there is neither (an extension installed without its backend).
    Nothing is written or imported.
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
    return InstallPlan(backend, requirement_problems([*read_requirements(package / REQUIREMENTS_NAME), *extra]))


def pins_of_provided() -> str:
    """Constraints (pip ``-c`` file text) pinning the installed versions of Slicer's own packages."""
    return "".join(f"{name}=={installed_version(name)}\n" for name in sorted(SLICER_PROVIDED)
                   if installed_version(name) is not None)
