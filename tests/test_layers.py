"""The library's house: imports go down the layers of ARCHITECTURE.md, never up and never in a circle.

Every module of `lit_gpt/` is read with `ast` (nothing is imported), and every import of a `lit_gpt` module is
collected, function-level ones included. The layers, bottom-up, are `LAYERS` below; a module may import modules of its
own layer or of a lower one. A function-level import is only for a heavy optional dependency (transformers, torchao,
flash-attn, ...), never for a module of the library itself; entry points (`pretrain/`, `finetune/`, `scripts/`,
`generate/`, `eval/`, `dev/`) sit above every layer and are never imported by the library.
"""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_gpt"

# bottom-up; a module's layer is the first entry whose name is the module or a package holding it
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("files and formats", ("lit_gpt.cli", "lit_gpt.files", "lit_gpt.trust", "lit_gpt.signals")),
    (
        "model",
        (
            "lit_gpt.config",
            "lit_gpt.tokenizer",
            "lit_gpt.documents",
            "lit_gpt.loss",
            "lit_gpt.attention",
            "lit_gpt.model",
            "lit_gpt.lora",
            "lit_gpt.flops",
            "lit_gpt.hf",
            "lit_gpt.weights",
            "lit_gpt.utils",
        ),
    ),
    ("data", ("lit_gpt.data",)),
    ("training", ("lit_gpt.training",)),
    ("conversion and inference", ("lit_gpt.convert", "lit_gpt.generate", "lit_gpt.harness")),
]
TOP = "lit_gpt"  # the package's own __init__: the public names, above every layer


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return -1


def imports(path: Path, name: str, known: Set[str]) -> List[Tuple[str, int, bool]]:
    """(imported lit_gpt module, line, function-level) of every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from lit_gpt import model` imports a module; `from lit_gpt.model import GPT` imports lit_gpt.model
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == "lit_gpt" or target.startswith("lit_gpt."):
                while target not in known and "." in target:  # `import lit_gpt.data.loaders as x` and the like
                    target = target.rpartition(".")[0]
                nested = id(node) not in top_level and not _in_type_checking(tree, node)
                if (target, node.lineno, nested) not in found:
                    found.append((target, node.lineno, nested))
    return found


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and ast.unparse(stmt.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            if any(child is node for child in ast.walk(stmt)):
                return True
    return False


def graph() -> Dict[str, List[Tuple[str, int, bool]]]:
    found = modules()
    known = set(found)
    return {name: [i for i in imports(path, name, known) if i[0] != name] for name, path in found.items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    g = graph()
    # a package's __init__ importing its own modules is the package, not a circle through it
    edges = {m: {t for t, _, _ in deps if not (m != TOP and t.startswith(m + "."))} for m, deps in g.items()}
    found = cycles(edges)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_module_has_a_layer():
    missing = [m for m in modules() if m != TOP and layer_of(m) < 0]
    assert not missing, f"modules in no layer of tests/test_layers.py LAYERS (and ARCHITECTURE.md): {missing}"


def test_imports_go_down_the_layers():
    wrong = []
    for module, deps in graph().items():
        if module == TOP:
            continue
        for target, line, _ in deps:
            if layer_of(module) >= 0 and layer_of(target) > layer_of(module):
                above, below = LAYERS[layer_of(target)][0], LAYERS[layer_of(module)][0]
                wrong.append(f"{module}:{line} imports {target} ({above} above {below})")
    assert not wrong, "imports that climb a layer:\n" + "\n".join(wrong)


def test_no_function_level_import_of_the_library():
    """A function-level import hides a dependency from the reader (and the circles above): one of the library's own
    modules is imported at the top; only heavy optional dependencies are imported where they are used."""
    nested = [f"{m}:{line} imports {t}" for m, deps in graph().items() if m != TOP for t, line, lazy in deps if lazy]
    assert not nested, "function-level imports of the library:\n" + "\n".join(nested)


def test_the_library_never_imports_an_entry_point():
    entry_points = ("pretrain", "finetune", "scripts", "generate", "eval", "dev", "bench", "tests")
    wrong = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            wrong += [f"{name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in entry_points]
    assert not wrong, wrong


def test_the_checker_sees_circles_layers_and_nested_imports(tmp_path):
    """The walker itself: a relative import, a `from package import module` and a function-level import are seen."""
    pkg = tmp_path / "lit_gpt"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "model.py").write_text("def f():\n    from lit_gpt.data import loaders\n")
    (pkg / "data" / "loaders.py").write_text("from ..model import f\nfrom . import readers\n")
    (pkg / "data" / "readers.py").write_text("import lit_gpt.model\n")
    known = {module_name(p, tmp_path) for p in pkg.rglob("*.py")}
    found = {
        module_name(p, tmp_path): imports(p, module_name(p, tmp_path), known)
        for p in pkg.rglob("*.py")
        if p.name != "__init__.py"
    }
    assert found["lit_gpt.model"] == [("lit_gpt.data.loaders", 2, True)]
    assert found["lit_gpt.data.loaders"] == [("lit_gpt.model", 1, False), ("lit_gpt.data.readers", 2, False)]
    assert found["lit_gpt.data.readers"] == [("lit_gpt.model", 1, False)]
    edges = {m: {t for t, _, _ in deps} for m, deps in found.items()}
    assert cycles(edges) == [["lit_gpt.data.loaders", "lit_gpt.data.readers", "lit_gpt.model"]]
    assert layer_of("lit_gpt.data.loaders") > layer_of("lit_gpt.model")


def test_public_names_stay_where_users_import_them():
    """`from lit_gpt import GPT, Config, Tokenizer` and the modules `lit_gpt.model`, `lit_gpt.config`,
    `lit_gpt.tokenizer` (also as attributes after `import lit_gpt`, as before the package turned lazy), with no torch
    imported by `import lit_gpt` itself."""
    code = (
        "import sys, lit_gpt; assert 'torch' not in sys.modules; "
        "model, config, tokenizer = lit_gpt.model, lit_gpt.config, lit_gpt.tokenizer; "
        "from lit_gpt import GPT, Config, Tokenizer; "
        "assert (model.GPT, config.Config, tokenizer.Tokenizer) == (GPT, Config, Tokenizer); "
        "assert {'GPT', 'Config', 'Tokenizer'} <= set(dir(lit_gpt))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
