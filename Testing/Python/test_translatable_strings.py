"""Every user-facing string of the modules' Qt side goes through Slicer's translation function ``_`` (``tr``): the
messages of error, warning and confirmation dialogs, of exceptions shown by ``tryWithErrorDisplay``, of the log and
of labels. A literal (or an f-string) there would stay English in a translated Slicer."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "GVSLPretrain" / "GVSLPretrain.py", ROOT / "GVSLSegment" / "GVSLSegment.py",
         ROOT / "GVSLShared" / "GVSLSharedLib" / "module_base.py"]
MESSAGE_CALLS = {"errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay", "tryWithErrorDisplay",
                 "ValueError", "RuntimeError", "appendPlainText"}


def untranslated(source: str) -> list[str]:
    """``line: code`` of each literal message (not wrapped in ``_``) in a module's source."""
    found = []

    def literal(node: ast.AST) -> bool:
        return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)
                                                   and node.value.strip() != "")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in MESSAGE_CALLS and node.args and literal(node.args[0]):
                found.append(f"{node.lineno}: {ast.unparse(node)[:80]}")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "text" for t in targets) and literal(node.value):
                found.append(f"{node.lineno}: {ast.unparse(node)[:80]}")
    return found


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_user_facing_messages_are_translatable(path):
    assert untranslated(path.read_text(encoding="utf-8")) == []


def test_the_check_finds_literal_messages():
    source = ('slicer.util.errorDisplay("Oops")\nraise ValueError(f"bad {x}")\nlabel.text = "Done."\n'
              'slicer.util.errorDisplay(_("Fine"))\nlabel.text = _("{n} done").format(n=1)\nlabel.text = ""\n')
    assert sorted(line.split(":")[0] for line in untranslated(source)) == ["1", "2", "3"]
