"""The Slicer Extensions Index's checks of a submission, run on this checkout's CMakeLists.txt and GVSL.json.

The index validates ``GVSL.json`` against its catalogue-entry schema (v1.0.1), wants LF line endings, a known
category, a repository whose name holds "Slicer", an extension name that does not start with "Slicer", a top-level
``project()`` named like the description file, icon and screenshot URLs written literally in ``set(...)`` calls
(it reads the file with regular expressions, without CMake, so a ``${VARIABLE}`` is not expanded) and a licence
file. The repository URL is written once, as ``scm_url``: every other copy (homepage, icon, screenshots, the
modules' user-guide link) must point into it, and the files the URLs name must be committed here.
"""
from __future__ import annotations

import json
import re
import struct
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The schema's properties (slicer-extension-catalog-entry-schema-v1.0.1): name -> accepted Python type
SCHEMA_PROPERTIES = {"$schema": str, "build_dependencies": list, "build_subdirectory": str, "category": str,
                     "enabled": bool, "scm_revision": str, "scm_type": str, "scm_url": str, "tier": int}
SCHEMA_REQUIRED = ("scm_url", "scm_revision", "category", "tier")
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
# The categories the index accepts that this extension's modules could belong to (its list has 60 more)
ACCEPTED_CATEGORIES = ("Registration", "Segmentation", "Neuroimaging", "Quantification", "Utilities", "Analysis")
MODULE_CATEGORIES = {"GVSLPretrain": ["Registration"], "GVSLSegment": ["Segmentation"]}
LICENCE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")


def catalogue_problems(path: Path) -> list[str]:
    """What the index's JSON checks find in a catalogue entry (empty: none)."""
    text = path.read_text(encoding="utf-8")
    problems = ["non-LF line endings"] if "\r" in text else []
    entry = json.loads(text)
    problems += [f"{name} is missing" for name in SCHEMA_REQUIRED if name not in entry]
    for name, value in entry.items():
        kind = SCHEMA_PROPERTIES.get(name)
        if kind is None:
            problems.append(f"{name} is not a property of the schema")
        elif not isinstance(value, kind):
            problems.append(f"{name} is a {type(value).__name__}, not a {kind.__name__}")
    if entry.get("$schema") != SCHEMA_URL:
        problems.append(f"$schema is {entry.get('$schema')!r}")
    if entry.get("scm_type", "git") != "git" or not 1 <= entry.get("tier", 0) <= 5:
        problems.append("scm_type must be git and tier 1..5")
    if entry.get("category") not in ACCEPTED_CATEGORIES:
        problems.append(f"category {entry.get('category')!r} is not one the index knows")
    url = urllib.parse.urlsplit(entry.get("scm_url", ""))
    if url.scheme not in ("https", "git") or not url.netloc:
        problems.append(f"scm_url {entry.get('scm_url')!r} is not scheme://host/path")
    repository = Path(url.path).stem
    if "slicer" not in repository.lower():
        problems.append(f"the repository name {repository!r} does not hold 'Slicer'")
    if path.stem.lower().startswith("slicer"):
        problems.append(f"the extension name {path.stem!r} starts with 'Slicer'")
    return problems


def literal_set(cmake: str, name: str) -> str | None:
    """The quoted value of ``set(NAME "...")`` as the index's regular expressions read it (None if not there)."""
    found = re.findall(rf'set\s*\(\s*{name}\s*"([^"]+)"\s*\)', cmake, re.IGNORECASE)
    return found[0].strip() if found else None


def cmake_problems(root: Path, extension_name: str) -> list[str]:
    """What the index's CMakeLists.txt checks find (empty: none)."""
    cmake = (root / "CMakeLists.txt").read_text(encoding="utf-8")
    problems = []
    project = re.findall(r"project\s*\(\s*([^\s\)]+)", cmake, re.IGNORECASE)
    if not project or project[0].strip("\"'") != extension_name:
        problems.append(f"project() is {project[:1]}, not {extension_name}")
    for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_HOMEPAGE"):
        value = literal_set(cmake, name)
        if value is None:
            problems.append(f"{name} is not set to a quoted value")
            continue
        for url in value.split():
            if not url.startswith("http") or "${" in url:
                problems.append(f"{name}: {url!r} is not a literal URL starting with http")
    if not any((root / name).is_file() for name in LICENCE_NAMES):
        problems.append("no licence file")
    return problems


def png_width(path: Path) -> int:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">I", header[16:20])[0]


def repository_file(url: str, repository_url: str) -> Path:
    """The file of this checkout that a raw.githubusercontent.com URL of ``repository_url``'s main branch names."""
    owner_and_name = urllib.parse.urlsplit(repository_url).path.strip("/")
    prefix = f"https://raw.githubusercontent.com/{owner_and_name}/main/"
    assert url.startswith(prefix), f"{url} is not a file of {repository_url}"
    return ROOT / url[len(prefix):]


def test_catalogue_entry_passes_the_index_checks():
    assert catalogue_problems(ROOT / "GVSL.json") == []


def test_cmakelists_passes_the_index_checks():
    assert cmake_problems(ROOT, "GVSL") == []


def test_the_checks_can_fail(tmp_path):
    """A CMake variable in a URL, an unknown category and a repository name without 'Slicer' are reported."""
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    (tmp_path / "CMakeLists.txt").write_text(cmake.replace('set(EXTENSION_ICONURL "https://',
                                                           'set(EXTENSION_ICONURL "${BASE}/https://'))
    (tmp_path / "LICENSE").write_text("MIT")
    assert cmake_problems(tmp_path, "GVSL") == [
        f"EXTENSION_ICONURL: {literal_set((tmp_path / 'CMakeLists.txt').read_text(), 'EXTENSION_ICONURL')!r} is not "
        "a literal URL starting with http"]
    entry = json.loads((ROOT / "GVSL.json").read_text(encoding="utf-8"))
    (tmp_path / "GVSL.json").write_text(json.dumps({**entry, "category": "GVSL",
                                                    "scm_url": "https://github.com/owner/GVSL"}))
    assert catalogue_problems(tmp_path / "GVSL.json") == [
        "category 'GVSL' is not one the index knows", "the repository name 'GVSL' does not hold 'Slicer'"]


def test_every_url_points_into_the_one_repository():
    """scm_url is the one definition; the homepage, icon, screenshots and the modules' user-guide link follow it, and
    the files the URLs name are committed PNGs at least 128 pixels wide."""
    repository = json.loads((ROOT / "GVSL.json").read_text(encoding="utf-8"))["scm_url"].rstrip("/")
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert literal_set(cmake, "EXTENSION_HOMEPAGE") == f"{repository}#readme"
    urls = [literal_set(cmake, "EXTENSION_ICONURL"), *literal_set(cmake, "EXTENSION_SCREENSHOTURLS").split()]
    for url in urls:
        assert png_width(repository_file(url, repository)) >= 128, url
    module_base = (ROOT / "GVSLShared" / "GVSLSharedLib" / "module_base.py").read_text(encoding="utf-8")
    assert re.search(r'^USER_GUIDE_URL = "([^"]+)"', module_base, re.MULTILINE).group(1) == f"{repository}#readme"
    for name in MODULE_CATEGORIES:
        assert "userGuideLink()" in (ROOT / name / f"{name}.py").read_text(encoding="utf-8"), name
    owner_and_name = urllib.parse.urlsplit(repository).path.strip("/")
    for path in (ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "CMakeLists.txt"):
        for found in re.findall(r"github(?:usercontent)?\.com/([\w.-]+/SlicerGVSL)", path.read_text(encoding="utf-8")):
            assert found == owner_and_name, f"{path.name} names {found}"


@pytest.mark.parametrize("module", sorted(MODULE_CATEGORIES))
def test_modules_are_listed_where_users_look(module):
    """Slicer's module menu: Registration and Segmentation, categories the index knows (not a category of our own)."""
    source = (ROOT / module / f"{module}.py").read_text(encoding="utf-8")
    categories = json.loads(re.search(r"self\.parent\.categories = (\[[^\]]*\])", source).group(1))
    assert categories == MODULE_CATEGORIES[module]
    assert set(categories) <= set(ACCEPTED_CATEGORIES)
