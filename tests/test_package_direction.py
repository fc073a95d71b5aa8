"""Imports run one way: ``recoder_dist`` (the trainer) may import ``pipeline`` (the data
contract), never the reverse."""
import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pipeline_never_imports_recoder_dist():
    files = sorted(PIPELINE.glob("*.py"))
    assert len(files) >= 5  # the package is where this test looks for it
    offenders = {f.name: sorted(m for m in _imported_modules(f) if m.split(".")[0] == "recoder_dist")
                 for f in files}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from recoder_dist.config import load_config\n    import recoder_dist.losses\n")
    assert _imported_modules(probe) == {"recoder_dist.config", "recoder_dist.losses"}
