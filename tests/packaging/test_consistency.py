"""The code keeps the shape the README draws, checked from the source with `ast` (in the
spirit of diffusers' utils/check_*.py), so no grep can be fooled by a comment:

1. Imports follow the layers, bottom up: models <- kernels <- export <- engines <- serving
   <- benchmarks <- cli. A module imports its own layer and the ones below, never above.
   Every import counts, function-level ones included (a lazy import is a dependency
   still); imports under `if TYPE_CHECKING:` are annotations only and do not.
2. No import cycle between modules.
3. A fact one module owns is spelled in no other (string constants; docstrings are prose):
   stage and graph names (the stage files, models/stage*.py), "manifest.json"
   (export/manifest.py), GPU architectures and compute-capability comparisons like "sm89"
   or `>= (8, 9)` (models/backends.py), and dicts keyed by dtypes (models/dtypes.py).

Listed exception: models/attention.py names the Triton kernels' backend module as a string
(`_LAZY_BACKENDS`) and imports it on first use, so the kernels register themselves with
the model layer below them. A string naming a module is counted as an import, and this one
is the only one allowed to point up.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cinema_trt.models.dtypes import find
from cinema_trt.models.stages import GRAPH_NAMES, STAGE_NAMES

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("models", "kernels", "export", "engines", "serving", "benchmarks", "cli")
# (importer, imported) pairs allowed against the layer order, with why
EXCEPTIONS = {("cinema_trt.models.attention", "cinema_trt.kernels.backends"):
              "string-named kernel backend registration (models/attention.py _LAZY_BACKENDS)"}
STAGE_OWNERS = re.compile(r"models/stages?(_\w+)?\.py")
SM = re.compile(r"\bsm\d{2,3}\b", re.IGNORECASE)
DTYPE_MODULES = ("torch", "np", "numpy", "ml_dtypes")


@dataclass
class Module:
    name: str  # cinema_trt.<layer>.<stem>
    path: str  # relative to the repository root
    tree: ast.Module
    imports: set[str] = field(default_factory=set)

    @property
    def layer(self) -> str:
        return self.name.split(".")[1]


def modules(root: Path = ROOT) -> dict[str, Module]:
    found = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            stem = path.relative_to(root / layer).with_suffix("").as_posix().replace("/", ".")
            name = f"cinema_trt.{layer}.{stem}"
            found[name] = Module(name, path.relative_to(root).as_posix(),
                                 ast.parse(path.read_text(), str(path)))
    for module in found.values():
        module.imports = imports_of(module, set(found))
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imports_of(module: Module, known: set[str]) -> set[str]:
    """The project modules `module` imports: statements anywhere in it (not under
    TYPE_CHECKING), and string constants that name a module (importlib)."""
    package = module.name.rsplit(".", 1)[0]
    skipped, found = _type_checking_only(module.tree), set()
    for node in ast.walk(module.tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets = [node.value]
        else:
            continue
        found.update(t for t in targets if t in known)
    return found - {module.name}


def layer_violations(found: dict[str, Module]) -> list[str]:
    return sorted(f"{m.path}: imports {target} from the {found[target].layer} layer, above "
                  f"{m.layer}" for m in found.values() for target in m.imports
                  if LAYERS.index(found[target].layer) > LAYERS.index(m.layer)
                  and (m.name, target) not in EXCEPTIONS)


def cycles(found: dict[str, Module]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    result: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in found[name].imports:
            if (name, target) in EXCEPTIONS:  # an inversion by design, not a dependency
                continue
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for name in sorted(found):
        if name not in index:
            visit(name)
    return result


def _strings(tree: ast.Module) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docstrings]


def _is_dtype(key: ast.expr | None) -> bool:
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return find(key.value) is not None
    return (isinstance(key, ast.Attribute) and isinstance(key.value, ast.Name)
            and key.value.id in DTYPE_MODULES and find(key.attr) is not None)


def _is_capability(node: ast.expr) -> bool:
    return (isinstance(node, ast.Tuple) and len(node.elts) == 2
            and all(isinstance(e, ast.Constant) and isinstance(e.value, int)
                    for e in node.elts))


def owned_literals(path: str, tree: ast.Module) -> list[str]:
    """What `tree` (the module at `path`) spells that another module owns."""
    found = []
    names = set(STAGE_NAMES) | set(GRAPH_NAMES)
    for node in _strings(tree):
        where = f"{path}:{node.lineno}"
        if node.value in names and not STAGE_OWNERS.fullmatch(path):
            found.append(f"{where}: stage name {node.value!r} (ask the stage, models/stages.py)")
        if "manifest.json" in node.value and path != "export/manifest.py":
            found.append(f"{where}: 'manifest.json' (export/manifest.py MANIFEST_FILE)")
        if SM.search(node.value) and path != "models/backends.py":
            found.append(f"{where}: GPU architecture {SM.search(node.value)[0]!r} "
                         f"(models/backends.py)")
    for node in ast.walk(tree):
        # an ordering of two-int tuples (`>= (8, 9)`); membership (`bits in (4, 8)`) is not one
        if isinstance(node, ast.Compare) and path != "models/backends.py" and any(
                _is_capability(side) for side in (node.left, *node.comparators)) and not all(
                isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            found.append(f"{path}:{node.lineno}: compute-capability comparison "
                         f"(models/backends.py supports / sm_of)")
        if isinstance(node, ast.Dict) and path != "models/dtypes.py" \
                and sum(map(_is_dtype, node.keys)) >= 2:
            found.append(f"{path}:{node.lineno}: a dict keyed by dtypes (models/dtypes.py)")
    return found


@pytest.fixture(scope="module")
def tree():
    return modules()


def test_imports_follow_the_layers(tree):
    assert layer_violations(tree) == []


def test_the_listed_exception_is_still_needed_and_the_only_one(tree):
    (importer, imported), = EXCEPTIONS
    assert imported in tree[importer].imports  # or the exception goes from the list


def test_there_is_no_import_cycle(tree):
    assert cycles(tree) == []


def test_owned_facts_are_spelled_only_by_their_owner(tree):
    assert [v for m in tree.values() for v in owned_literals(m.path, m.tree)] == []


# --- the checker itself fails on each kind of violation (the bug each rule catches) ---------


def _planted(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return modules(tmp_path)


def test_an_upward_import_is_caught_even_inside_a_function(tmp_path):
    found = _planted(tmp_path, {
        "models/a.py": "def f():\n    from cinema_trt.serving import b\n",
        "serving/b.py": "X = 1\n",
        "export/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from cinema_trt.engines import d\n",
        "engines/d.py": "import importlib\nimportlib.import_module('cinema_trt.cli.e')\n",
        "cli/e.py": ""})
    assert [v.split(":")[0] for v in layer_violations(found)] == ["engines/d.py",
                                                                  "models/a.py"]


def test_a_cycle_is_caught_through_relative_imports(tmp_path):
    found = _planted(tmp_path, {"engines/a.py": "from .b import X\nY = 1\n",
                                "engines/b.py": "def f():\n    from .a import Y\nX = 1\n",
                                "engines/c.py": "from .a import Y\n"})
    assert cycles(found) == [["cinema_trt.engines.a", "cinema_trt.engines.b"]]


@pytest.mark.parametrize("code, rule", [
    (f"STAGE = {STAGE_NAMES[-1]!r}", "stage name"),
    (f"runners[{GRAPH_NAMES[0]!r}]", "stage name"),
    ("path = folder / 'manifest.json'", "manifest.json"),
    ("help = f'targets, e.g. SM89 or {x}'", "GPU architecture"),
    ("ok = torch.cuda.get_device_capability() >= (8, 9)", "compute-capability"),
    ("EPS = {'float16': 1e-3, 'bfloat16': 1e-2}", "keyed by dtypes"),
    ("EPS = {torch.float16: 1e-3, torch.float32: 1e-6}", "keyed by dtypes"),
])
def test_each_owned_fact_is_caught_outside_its_owner(code, rule):
    found = owned_literals("serving/x.py", ast.parse(f'"""A docstring may say sm89 and '
                                                     f'manifest.json."""\n{code}\n'))
    assert len(found) == 1 and rule in found[0], found
    assert owned_literals("serving/x.py", ast.parse('"""dit, sm89, manifest.json"""\n')) == []
