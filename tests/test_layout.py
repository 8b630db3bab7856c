"""The package's architecture, checked (docs/architecture.md): the library imports without
the training application's dependencies, the Python import graph has no circle and no
upward edge between the layers, the C++ include graph likewise between csrc/'s folders,
the op schemas are written once, each name has one home (the flat layout's re-export
modules are gone), and a pickled model loads."""
import ast
import os
import pickle
import re
import subprocess
import sys
import warnings

import pytest
import torch

import r2p1d_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "r2p1d_ext")
CSRC = os.path.join(ROOT, "csrc")


def _python(lines, cwd):
    """Runs the script `lines` in a fresh interpreter that finds this checkout's package."""
    return subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=str(cwd), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)


# ------------------------------------------------------------------ Python imports
def _module_names():
    """Every module of the package: dotted name -> (path, is_package)."""
    out = {}
    for folder, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                out[name] = (os.path.join(folder, f), f == "__init__.py")
    return out


COMPILED = "r2p1d_ext._C"  # the extension: a module with no Python source, at the bottom


def _import_graph():
    """module -> the package modules it imports (at top level or inside functions)."""
    modules = _module_names()
    graph = {}
    for name, (path, is_pkg) in modules.items():
        package = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (base + "." + node.module if node.module else base) if node.level else node.module
                # `from pkg import name` imports the submodule pkg.name where there is one.
                targets = [base + "." + a.name if base + "." + a.name in modules or base + "." + a.name == COMPILED
                           else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if (t in modules or t == COMPILED) and t != name)
        graph[name] = edges
    return graph


def _layer(name):
    """The layers, bottom up: the kernel library, the models, fuse and the package's front,
    then the data layer and the training application beside them, the entry points last."""
    tail = name[len("r2p1d_ext."):] if name != "r2p1d_ext" else ""
    if tail in ("_C", "_extension", "_args", "_io", "_extras", "_cli_common"):
        return 0
    if tail in ("ops", "reference", "folding", "measure", "sync_bn"):
        return 1
    if tail in ("module",):
        return 2
    if tail in ("conv_bn",):
        return 3
    if tail.startswith("models"):
        return 4
    if tail in ("fuse", "") or tail.startswith("tools"):
        return 5
    if tail.startswith("data"):
        return 6
    if tail.startswith("train"):
        return 7
    return 8  # cli, __main__ and the deprecated re-export modules


def test_import_graph_has_no_circle_and_no_upward_edge():
    graph = _import_graph()
    upward = [(a, b) for a, edges in graph.items() for b in edges if _layer(b) > _layer(a)]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"
    # The data layer stands beside the library: it needs none of it.
    data_to_library = [(a, b) for a, edges in graph.items() if _layer(a) == 6 for b in edges if 1 <= _layer(b) <= 5]
    assert not data_to_library, data_to_library
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import circle: " + " -> ".join(path + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    graph[COMPILED] = set()
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_library_needs_no_training_dependencies(tmp_path):
    """The library (ops, module, fuse/unfuse, the networks) imports and runs with OpenCV, tqdm
    and matplotlib unavailable and imports nothing of the data layer or the training
    application; the `r2p1d` command then says which extra to install."""
    out = _python([
        "import sys",
        "for name in ('cv2', 'tqdm', 'matplotlib'): sys.modules[name] = None  # as if not installed",
        "import torch, r2p1d_ext",
        "from r2p1d_ext import SpatioTemporalConv, fuse, unfuse, models",
        "m = models.r2plus1d_10(num_classes=3).eval()",
        "x = torch.randn(1, 3, 4, 32, 32)",
        "conv = SpatioTemporalConv(3, 8, 3, padding=1)",
        "assert conv(x).shape == (1, 8, 4, 32, 32)",
        "back = fuse(unfuse(m))",
        "print(tuple(m(x).shape), type(unfuse(m).stem[0]).__name__, type(back.stem[0]).__name__)",
        "print(sorted(n for n in sys.modules if n.startswith(('r2p1d_ext.data', 'r2p1d_ext.train'))))",
        "from r2p1d_ext.cli import main",
        "sys.exit(main(['--help']))"], tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[0] == "(1, 3) SpatioTemporalConv SpatioTemporalConv", out.stdout
    assert lines[1] == "[]", "the library imported the training application: " + lines[1]
    assert re.search(r"module '(cv2|tqdm)' is missing\): pip install 'r2p1d_ext\[train\]'", out.stderr)


def test_the_data_and_train_packages_name_their_extra(tmp_path):
    out = _python([
        "import sys",
        "sys.modules['cv2'] = None",
        "from r2p1d_ext._extras import MissingExtraError",
        "for name in ('r2p1d_ext.data', 'r2p1d_ext.train'):",
        "    try:",
        "        __import__(name)",
        "    except MissingExtraError as err:",
        "        print(err.name, '|', err)"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [
        "cv2 | r2p1d_ext.data needs the train dependencies (module 'cv2' is missing): pip install 'r2p1d_ext[train]'",
        "cv2 | r2p1d_ext.train needs the train dependencies (module 'cv2' is missing): pip install "
        "'r2p1d_ext[train]'"]


def test_python_m_r2p1d_ext_runs_the_command():
    for module in ("r2p1d_ext", "r2p1d_ext.cli"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and "make-synthetic,prepare,train,eval" in out.stdout, out.stderr[-2000:]


# ------------------------------------------------------------------ one home for each name
# The flat layout's modules (removed in 0.2.0: CHANGELOG.md) are gone, not forwarded.
REMOVED = ["r2p1d_ext.network", "r2p1d_ext.trainer", "r2p1d_ext.dataset", "r2p1d_ext.checkpoint",
           "r2p1d_ext.manifest", "r2p1d_ext.prepare", "r2p1d_ext.synthetic", "r2p1d_ext._deprecated"]
KEPT = [("r2p1d_ext.module", "SpatioTemporalConv"), ("r2p1d_ext.reference", "SpatioTemporalConv"),
        ("r2p1d_ext.folding", "FoldCache"), ("r2p1d_ext.fuse", "fuse"), ("r2p1d_ext.ops", "fused_eval"),
        ("r2p1d_ext.measure", "saved_activation_bytes"), ("r2p1d_ext.cli", "main")]


@pytest.mark.parametrize("module", REMOVED)
def test_the_flat_layout_is_gone(module):
    import importlib
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(module)


def test_folding_forwards_nothing():
    import r2p1d_ext.folding
    assert not hasattr(r2p1d_ext.folding, "__getattr__")
    with pytest.raises(AttributeError):
        r2p1d_ext.folding.conv_bn


@pytest.mark.parametrize("module,name", KEPT)
def test_kept_paths_do_not_warn(module, name):
    import importlib
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(importlib.import_module(module), name)


def test_a_pickled_model_loads():
    """A whole model pickled names r2p1d_ext.module.SpatioTemporalConv and
    r2p1d_ext.folding.FoldCache (which pickles empty); it loads and computes the same."""
    model = r2p1d_ext.models.r2plus1d_10(num_classes=3).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        want = model(x)  # fills the fold caches
    data = pickle.dumps(model, protocol=2)
    for name in (b"r2p1d_ext.module\nSpatioTemporalConv", b"r2p1d_ext.folding\nFoldCache"):
        assert name in data
    with torch.no_grad():
        assert torch.equal(pickle.loads(data)(x), want)


# ------------------------------------------------------------------ C++ includes
def _includes():
    """csrc file -> the csrc files it includes, resolved as the compiler does (the including
    file's folder first, then csrc/, the one include folder)."""
    files = {}
    for folder, _, names in os.walk(CSRC):
        for f in names:
            path = os.path.join(folder, f)
            files[os.path.relpath(path, CSRC)] = path
    graph = {}
    for rel, path in files.items():
        edges = set()
        for inc in re.findall(r'^#include "([^"]+)"', open(path).read(), re.M):
            local = os.path.normpath(os.path.join(os.path.dirname(rel), inc))
            target = local if local in files else inc if inc in files else None
            assert target is not None, f"{rel} includes {inc}, which is no file of csrc/"
            edges.add(target)
        graph[rel] = edges
    return graph


def _folder_rank(rel):
    """csrc/'s layers: the portable tensor-core code (no torch), the torch-facing shared host
    code at the top of csrc/, the kernel folders, the CUDA ops' router."""
    folder = os.path.dirname(rel)
    if folder.startswith("tc"):
        return 0
    if folder == "":
        return 1
    if folder == "cuda":
        return 3
    return 2  # cpu/, cpu/winograd/, emulate/, cuda/direct/, cuda/igemm/


def test_include_graph_has_no_upward_include():
    graph = _includes()
    upward = [(a, b) for a, edges in graph.items() for b in edges if _folder_rank(b) > _folder_rank(a)]
    assert not upward, upward
    # The kernel folders (cpu/, emulate/, cuda/direct/, cuda/igemm/) stand side by side: none
    # includes another's files.
    def family(rel):
        parts = rel.split(os.sep)
        return os.sep.join(parts[:2]) if parts[0] == "cuda" else parts[0]

    across = [(a, b) for a, edges in graph.items() for b in edges
              if _folder_rank(a) == _folder_rank(b) == 2 and family(a) != family(b)]
    assert not across, across
    # The portable tensor-core code includes no torch header.
    for rel in graph:
        if _folder_rank(rel) == 0:
            text = open(os.path.join(CSRC, rel)).read()
            assert not re.search(r"#include <(torch|ATen|c10)/", text), rel


def test_every_cuda_op_is_registered_in_one_file_and_the_schemas_written_once():
    registering, defining = [], []
    for folder, _, names in os.walk(CSRC):
        for f in names:
            text = open(os.path.join(folder, f)).read()
            rel = os.path.relpath(os.path.join(folder, f), CSRC)
            if "TORCH_LIBRARY_IMPL(r2p1d, CUDA" in text:
                registering.append(rel)
            # The emulator's own ops (its plan and its counters) are not library ops.
            if re.search(r'm\.def\(\s*"(?!plan\(|counters\()', text):
                defining.append(rel)
    assert registering == [os.path.join("cuda", "ops_cuda.cpp")]
    assert defining == [], f"schema strings outside csrc/schemas.h: {defining}"
    for op in ("spatial_conv_stats", "spatial_conv_backward", "temporal_conv_bnrelu",
               "temporal_conv_bnrelu_backward", "fused_eval"):
        ours = str(getattr(torch.ops.r2p1d, op).default._schema).split("(", 1)[1]
        emulated = str(getattr(torch.ops.r2p1d_tc_emulate, op).default._schema).split("(", 1)[1]
        assert emulated == ours.replace(") ->", ", int sm_count=132, int tile=-1) ->", 1), op
