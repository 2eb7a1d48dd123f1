"""Static checks of the Slicer modules' widgets against their Qt Designer files (no Slicer needed).

For every module ``<Module>/<Module>.py`` that has ``Resources/UI/<Module>.ui``: each ``self.ui.<name>`` the module
uses is an object in the .ui file, and each ``SlicerParameterName`` in the .ui file is a field of the module's
``@parameterNodeWrapper`` class.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(p.parent.name for p in ROOT.glob("*/*.py")
                 if p.stem == p.parent.name and (ROOT / "Resources" / "UI" / f"{p.stem}.ui").exists())


def ui_tree(module: str) -> ET.Element:
    return ET.parse(ROOT / "Resources" / "UI" / f"{module}.ui").getroot()


def module_source(module: str) -> str:
    return (ROOT / module / f"{module}.py").read_text(encoding="utf-8")


def test_modules_found():
    assert "GVSLPretrain" in MODULES


def object_names(module: str) -> list[str]:
    return [element.get("name") for element in ui_tree(module).iter()
            if element.tag in ("widget", "layout", "action", "spacer")]


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_used_exists(module):
    used = set(re.findall(r"\bself\.ui\.([A-Za-z_]\w*)", module_source(module)))
    assert used - set(object_names(module)) == set(), f"{module}.py uses widgets missing from {module}.ui"


@pytest.mark.parametrize("module", MODULES)
def test_object_names_are_unique(module):
    names = object_names(module)
    assert sorted({n for n in names if names.count(n) > 1}) == []


def parameter_fields(source: str) -> set[str] | None:
    """Annotated field names of the class decorated with ``@parameterNodeWrapper`` (None if there is none)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return None


@pytest.mark.parametrize("module", MODULES)
def test_every_parameter_name_is_a_field(module):
    fields = parameter_fields(module_source(module))
    bound = {p.findtext("string") for p in ui_tree(module).iter("property") if p.get("name") == "SlicerParameterName"}
    if fields is None:
        assert not bound, f"{module}.ui binds parameters but {module}.py has no @parameterNodeWrapper class"
        return
    assert bound - fields == set(), f"{module}.ui binds parameters that {module}.py does not declare"


def parameter_defaults(source: str) -> dict[str, object]:
    """Literal defaults of the ``@parameterNodeWrapper`` class's fields."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: s.value.value for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.value, ast.Constant)}
    return {}


def test_module_match_defaults_are_the_backends():
    """The module's refinement default is ``gvsl match``'s (the module cannot import the backend at start-up)."""
    from gvsl.match import RefineConfig

    defaults = parameter_defaults(module_source("GVSLPretrain"))
    assert defaults["refineSteps"] == RefineConfig().iterations
    spin = next(w for w in ui_tree("GVSLPretrain").iter("widget") if w.get("name") == "refineStepsSpinBox")
    assert int(next(p for p in spin.iter("property") if p.get("name") == "value").findtext("number")) == \
        RefineConfig().iterations


# Each module field restated from a backend configuration class: module field -> config field.
RUN_FIELDS = {"iterations": "iterations", "patchSize": "patch", "batchSize": "batch", "learningRate": "lr",
              "precision": "precision", "device": "device"}
BACKEND_CONFIGS = {"GVSLPretrain": ("gvsl.train.config", "TrainConfig", RUN_FIELDS),
                   "GVSLSegment": ("gvsl.finetune.config", "FinetuneConfig",
                                   {**RUN_FIELDS, "validationInterval": "val_every", "mode": "mode"})}


@pytest.mark.parametrize("module", sorted(BACKEND_CONFIGS))
def test_module_run_defaults_are_the_backends(module):
    """The modules' run settings start at ``gvsl pretrain``'s and ``gvsl finetune``'s defaults (the configuration
    classes; the widgets cannot import them: the backend may not be installed yet). A cubic patch is one size.

    ``gvsl pretrain --batch auto`` (its default) is the module's batch 0, shown as "auto" (``runs.AUTO_BATCH``, which
    ``test_slicer_pretrain_logic`` checks becomes ``--batch auto``)."""
    import dataclasses
    import importlib

    from gvsl.train.config import AUTO_BATCH

    path, name, fields = BACKEND_CONFIGS[module]
    config = getattr(importlib.import_module(path), name)
    backend = {field.name: field.default for field in dataclasses.fields(config)}
    defaults = parameter_defaults(module_source(module))
    for field, backend_field in fields.items():
        expected = backend[backend_field]
        if field == "patchSize":
            assert len(set(expected)) == 1, expected
            expected = expected[0]
        if field == "batchSize" and expected == AUTO_BATCH:
            expected = 0
        if field == "mode" and expected is None:
            expected = "auto"  # finetuning.AUTO_MODE: no --mode, the backend's default
        assert defaults[field] == expected, f"{module}.{field}"
