"""The code's shape, checked: no import circle inside imgtrain, no function longer than a screen."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "imgtrain"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parse(path: Path) -> ast.Module:
    """``ast.parse``, again if CPython 3.11's AST constructor miscounts its depth: its counter is
    shared by the interpreter's threads, and a thread left by an earlier test in this worker
    (TensorFlow's, a tracker's) can move it meanwhile (python/cpython#106905)."""
    for _attempt in range(4):
        try:
            return ast.parse(path.read_text(), str(path))
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
    return ast.parse(path.read_text(), str(path))


@functools.cache
def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): _parse(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """imgtrain modules ``name`` imports anywhere in its body (deferred imports count too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: -node.level] if not name.endswith("__init__") else name.split(".")
                base = ".".join(package + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else path + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_circle_in_the_package():
    modules = _modules()
    known = set(modules)
    # A package's __init__ importing its own submodules is how packages re-export, not a circle.
    graph = {
        n: {m for m in _imports(n, t, known) if not (m.startswith(n + ".") and n in known)} for n, t in modules.items()
    }
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_over_a_screen():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, f"over {MAX_FUNCTION_LINES} lines: " + ", ".join(sorted(long))


def test_evaluate_and_train_do_not_import_each_other():
    """``evaluate/`` is the pure part (sums -> metrics -> report -> plots) and ``train/`` the
    loop; what both need sits below both (config, data), their conductors above
    (``run.py``, ``evaluation.py``)."""
    modules = _modules()
    known = set(modules)
    crossings = []
    for name, tree in modules.items():
        for pair in (("imgtrain.evaluate", "imgtrain.train"), ("imgtrain.train", "imgtrain.evaluate")):
            if name.startswith(pair[0] + ".") or name == pair[0]:
                crossings += [f"{name} -> {t}" for t in _imports(name, tree, known) if t.startswith(pair[1])]
    assert not crossings, crossings


def _owner_names(module: str) -> dict[str, str]:
    """The module-level UPPER_CASE string constants of ``module``: {value: name}."""
    tree = _modules()[module]
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    found[node.value.value] = target.id
    return found


# A word that is a run directory's file name and, by design, also something else's name.
SAME_WORD_ELSEWHERE = {
    ("imgtrain.export", "saved_model"),  # the export format named for the folder it writes
    ("imgtrain.commands.export", "saved_model"),
    ("imgtrain.commands", "export"),  # the command
    ("imgtrain.commands.export", "export"),
    ("imgtrain.resumption", "export"),  # the config's export section, a setting a resume may change
}


def test_the_run_directory_names_its_files_in_one_place():
    """A file name of the run directory is written in imgtrain/rundir.py only; everything else
    joins a run directory with rundir's constants."""
    names = _owner_names("imgtrain.rundir")
    assert {"run.json", "history.csv", "checkpoints", "model.keras"} <= set(names)
    leaks = []
    for module, tree in _modules().items():
        if module == "imgtrain.rundir":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or node.value not in names:
                continue
            if (module, node.value) not in SAME_WORD_ELSEWHERE:
                leaks.append(f"{module}:{node.lineno} {node.value!r} (rundir.{names[node.value]})")
    assert not leaks, leaks


def _attribute_uses(module_alias: str, attribute: str) -> list[str]:
    """Modules that read ``<module_alias>.<attribute>``."""
    return sorted(
        name
        for name, tree in _modules().items()
        if any(
            isinstance(n, ast.Attribute) and n.attr == attribute and getattr(n.value, "id", None) == module_alias
            for n in ast.walk(tree)
        )
    )


def test_history_csv_is_read_and_written_by_its_module_only():
    """(Its name, rundir.HISTORY, is how any other module would reach it: the literal itself
    is held to rundir.py by the test above.)"""
    # The storage mirror moves it to and from a bucket as bytes, and never opens it.
    assert _attribute_uses("rundir", "HISTORY") == ["imgtrain.history", "imgtrain.storage.mirror"]


def test_mlflow_is_imported_by_the_sender_and_the_model_package_only():
    """What is logged (tracking.record) and the ledger need no MLflow; the MLflow client lives
    in tracking.sender and the model's packaging with the exports."""
    modules = _modules()
    importers = sorted(
        name
        for name, tree in modules.items()
        for node in ast.walk(tree)
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mlflow" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow" and not node.level)
    )
    assert set(importers) == {"imgtrain.tracking.sender", "imgtrain.export.mlflow_model"}, importers


def test_seed_streams_are_folded_in_one_place_under_named_salts():
    """Every stateless fold happens in imgtrain/seeds.py, whose salts are named constants; a
    call site passes a stream's name (seeds.DRAWS), never a number."""
    leaks = []
    for module, tree in _modules().items():
        if module == "imgtrain.seeds":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name == "stateless_fold_in":
                leaks.append(f"{module}:{node.lineno} stateless_fold_in (use seeds.fold)")
            if name == "fold" and any(isinstance(a, ast.Constant) and isinstance(a.value, int) for a in node.args):
                leaks.append(f"{module}:{node.lineno} a salt written as a number")
    assert not leaks, leaks
    salts = _owner_names_int("imgtrain.seeds")
    assert len(set(salts.values())) == len(salts), f"two streams share a salt: {salts}"


def _owner_names_int(module: str) -> dict[str, int]:
    """The module-level UPPER_CASE integer constants of ``module``: {name: value}."""
    return {
        t.id: node.value.value
        for node in _modules()[module].body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)
        for t in node.targets
        if isinstance(t, ast.Name) and t.id.isupper()
    }


def test_object_storage_is_reached_through_the_storage_seam_and_a_run_written_by_its_training_only():
    """fsspec and its clients are imported in imgtrain/storage/ only. A bucket run's files are
    pushed and pulled by the training's mirror, from the uploader and runplace only; a reader
    (storage/readcopy.py) asks the mirror what is unsent and sends back only its own outputs."""
    clients = {"fsspec", "s3fs", "gcsfs"}
    found, moved = [], []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            roots = (
                [a.name.split(".")[0] for a in node.names]
                if isinstance(node, ast.Import)
                else [(node.module or "").split(".")[0]]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if clients & set(roots) and not name.startswith("imgtrain.storage."):
                found.append(name)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("push", "pull"):
                moved.append(name)
    assert not found, found
    assert sorted(set(moved)) == ["imgtrain.storage.runplace", "imgtrain.storage.uploader"], moved


def test_storage_sits_beneath_the_config_and_beside_the_training():
    """The bucket seam is reached from the doors (commands, run.py, data): ``train/`` and
    ``evaluate/`` never import ``storage/`` (a ``--warm-start`` URL is fetched by run.py), and
    nothing ``storage/`` imports, however indirectly, reaches ``config`` (no arrow back up)."""
    modules = _modules()
    known = set(modules)
    graph = {n: _imports(n, t, known) for n, t in modules.items()}
    crossings = [
        f"{name} -> {t}"
        for name in graph
        if name.startswith(("imgtrain.train.", "imgtrain.evaluate."))
        for t in graph[name]
        if t.startswith("imgtrain.storage")
    ]
    assert not crossings, crossings

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    upward = {n: sorted(reach(n) & {"imgtrain.config"}) for n in graph if n.startswith("imgtrain.storage")}
    assert not {n: up for n, up in upward.items() if up}, upward
