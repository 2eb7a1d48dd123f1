"""The extension's build description, read (not run): which files Slicer's build copies into qt-scripted-modules.

Each ``slicerMacroBuildScriptedModule`` and ``ctkMacroCompilePythonScript`` call is turned into the (source file,
installed path) pairs that CTK's copy step makes: a relative entry ``f`` is copied from ``<its CMakeLists folder>/f``
to ``<qt-scripted-modules>/f``, and ``install(DIRECTORY)`` ships only what lands inside that folder. Used by the
static checks (``test_extension_build_files.py``) and to assemble the installed layout (``test_installed_layout.py``).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

_COMMAND = re.compile(r"(\w+)\s*\(")
_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s"]+)')
_VARIABLE = re.compile(r"\$\{(\w+)\}")


def cmake_commands(text: str) -> list[tuple[str, list[str]]]:
    """(lower-case command name, raw arguments) of every command in a CMake file; comments dropped."""
    text = re.sub(r'#[^\n"]*(?=\n|$)', "", text)
    commands, position = [], 0
    while (found := _COMMAND.search(text, position)) is not None:
        depth, end = 1, found.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        body = text[found.end():end - 1]
        commands.append((found.group(1).lower(),
                         [quoted if quoted else bare for quoted, bare in _ARGUMENT.findall(body)]))
        position = end
    return commands


def expand(arguments: list[str], variables: dict[str, list[str]]) -> list[str]:
    """Arguments with known ``${VAR}`` substituted (unknown ones, e.g. Slicer's, kept as written); an argument that
    is just ``${LIST}`` becomes the list's items."""
    expanded = []
    for argument in arguments:
        whole = _VARIABLE.fullmatch(argument)
        if whole and whole.group(1) in variables:
            expanded.extend(variables[whole.group(1)])
        else:
            expanded.append(_VARIABLE.sub(lambda m: ";".join(variables.get(m.group(1), [m.group(0)])), argument))
    return expanded


def keyword_values(arguments: list[str], keyword: str, keywords: tuple[str, ...]) -> list[str]:
    """The values after ``keyword`` up to the next keyword of ``keywords``."""
    if keyword not in arguments:
        return []
    values = []
    for value in arguments[arguments.index(keyword) + 1:]:
        if value in keywords:
            break
        values.append(value)
    return values


@dataclass
class CMakeFile:
    """What one CMakeLists.txt sets and calls, with its variables evaluated in order."""

    folder: Path
    variables: dict[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[str, list[str]]] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path, inherited: dict[str, list[str]] | None = None) -> CMakeFile:
        parsed = cls(folder, dict(inherited or {}, CMAKE_CURRENT_SOURCE_DIR=[str(folder)]))
        for name, raw in cmake_commands((folder / "CMakeLists.txt").read_text(encoding="utf-8")):
            arguments = expand(raw, parsed.variables)
            if name == "set" and arguments:
                parsed.variables[arguments[0]] = [a for a in arguments[1:] if a != "PARENT_SCOPE"]
            elif name == "file" and arguments[:1] in (["GLOB"], ["GLOB_RECURSE"]):
                parsed.variables[arguments[1]] = cls._glob(folder, arguments)
            parsed.calls.append((name, arguments))
        return parsed

    @staticmethod
    def _glob(folder: Path, arguments: list[str]) -> list[str]:
        """CMake's file(GLOB[_RECURSE] VAR [RELATIVE DIR] [CONFIGURE_DEPENDS] PATTERN...) on this checkout."""
        patterns = [a for a in arguments[2:] if a not in ("CONFIGURE_DEPENDS", "LIST_DIRECTORIES")]
        relative = None
        if "RELATIVE" in patterns:
            relative = Path(patterns[patterns.index("RELATIVE") + 1])
            patterns = [p for p in patterns if p not in ("RELATIVE", str(relative))]
        found = []
        for pattern in patterns:
            pattern_path = Path(pattern) if Path(pattern).is_absolute() else folder / pattern
            directory, name = pattern_path.parent, pattern_path.name
            matches = directory.rglob(name) if arguments[0] == "GLOB_RECURSE" else directory.glob(name)
            found += sorted(str(m.relative_to(relative)) if relative else str(m) for m in matches if m.is_file())
        return found

    def called(self, name: str) -> list[list[str]]:
        return [arguments for called, arguments in self.calls if called == name]


@dataclass(frozen=True)
class Copied:
    """One file that the build copies into qt-scripted-modules: its source and its path there."""

    source: Path
    installed: PurePosixPath
    listed_in: Path


def copied_files(cmake: CMakeFile) -> list[Copied]:
    """The copy pairs of the file's slicerMacroBuildScriptedModule and ctkMacroCompilePythonScript calls."""
    keywords = ("NAME", "TARGET_NAME", "SCRIPTS", "RESOURCES", "SOURCE_DIR", "DESTINATION_DIR", "INSTALL_DIR",
                "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE", "NO_INSTALL_SUBDIR", "GLOBAL_TARGET")
    copies = []
    for macro in ("slicermacrobuildscriptedmodule", "ctkmacrocompilepythonscript"):
        for arguments in cmake.called(macro):
            base = Path((keyword_values(arguments, "SOURCE_DIR", keywords) or [str(cmake.folder)])[0])
            for kind in ("SCRIPTS", "RESOURCES"):
                for entry in keyword_values(arguments, kind, keywords):
                    for item in filter(None, entry.split(";")):
                        if kind == "SCRIPTS" and not item.endswith(".py"):
                            item += ".py"
                        source = Path(item) if Path(item).is_absolute() else base / item
                        copies.append(Copied(source, PurePosixPath(item), cmake.folder / "CMakeLists.txt"))
    return copies


@dataclass
class Extension:
    """The top-level build file, its ``modules`` (subfolders holding a module file named after them) and its
    ``packages`` (other subfolders: Python packages copied beside the modules, e.g. the code both modules share)."""

    root: Path
    top: CMakeFile
    modules: dict[str, CMakeFile]
    packages: dict[str, CMakeFile] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path) -> Extension:
        top = CMakeFile.read(root)
        modules, packages = {}, {}
        for arguments in top.called("add_subdirectory"):
            folder = root / arguments[0]
            if (folder / "CMakeLists.txt").is_file():  # a folder not there yet is skipped
                cmake = CMakeFile.read(folder, top.variables)
                kind = modules if (folder / f"{folder.name}.py").is_file() else packages
                kind[arguments[0]] = cmake
        return cls(root, top, modules, packages)

    def copies(self) -> list[Copied]:
        return [c for cmake in (self.top, *self.modules.values(), *self.packages.values()) for c in copied_files(cmake)]

    def installed(self) -> dict[PurePosixPath, Path]:
        return {c.installed: c.source.resolve() for c in self.copies()}

    def install_into(self, folder: Path) -> Path:
        """Copy every installed file to where the install puts it, ``folder`` standing for qt-scripted-modules."""
        for installed, source in self.installed().items():
            target = folder / installed
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return folder
