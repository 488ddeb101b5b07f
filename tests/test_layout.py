"""The package's import graph reads as its architecture: floors, no cycles, no upward imports, small modules."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "geolm"
FLOORS = ["core", "ops", "geometry", "data", "models", "training", "apps"]  # each may import only floors before it
MAX_LINES = 450


def _modules():
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name, path, mods):
    """geolm modules imported by `name` (at any depth, so lazy imports count too)."""
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                target = ".".join(parts[: len(parts) - (node.level - 1)]) + ("." + node.module if node.module else "")
            else:
                target = node.module or ""
            cands = [target + "." + a.name for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        else:
            continue
        for c in cands:
            while c and c not in mods:
                c = c.rsplit(".", 1)[0] if "." in c else ""
            if c and c != name and c != "geolm" and not name.startswith(c + "."):
                found.add(c)
                break
    return found


def _floor(mod):
    parts = mod.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else None


def test_every_module_lives_on_a_floor():
    loose = [m for m in _modules() if m != "geolm" and _floor(m) is None]
    assert not loose, f"modules outside the floor subpackages {FLOORS}: {loose}"


def test_no_upward_imports():
    mods = _modules()
    bad = []
    for m, path in mods.items():
        fm = _floor(m)
        for t in _imports(m, path, mods):
            ft = _floor(t)
            if fm is not None and ft is not None and ft > fm:
                bad.append(f"{m} ({FLOORS[fm]}) imports {t} ({FLOORS[ft]})")
    assert not bad, "upward imports: " + "; ".join(bad)


def test_no_import_cycles():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    state, stack, cycles = {}, [], []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_cycle_detector_finds_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "geolm" / "core"
    pkg.mkdir(parents=True)
    (tmp_path / "geolm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .a import y\n")
    monkeypatch.setattr(__import__(__name__), "PKG", tmp_path / "geolm")
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "geolm.core.a -> geolm.core.b -> geolm.core.a" in str(e)
    else:
        raise AssertionError("a planted cycle was not found")


def test_modules_are_small():
    big = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
