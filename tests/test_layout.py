"""The layout's promises: public names stay functions, imports run one way, the CLI starts light."""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import re
import subprocess
import sys

import cxrdata
import cxrmodels

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = (cxrdata, cxrmodels)


def _all_modules():
    for package in PACKAGES:
        yield package.__name__, package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            yield info.name, None


def test_public_functions_stay_functions_after_their_modules_are_imported(tmp_path):
    import cxrdata.conversion  # noqa: F401
    import cxrdata.verification  # noqa: F401
    import cxrmodels.evaluation.evaluator  # noqa: F401
    import cxrmodels.serving.exporting  # noqa: F401
    import cxrmodels.serving.prediction  # noqa: F401
    import cxrmodels.training.trainer  # noqa: F401
    import cxrmodels.tuning.searcher  # noqa: F401
    from cxrmodels.cli import main

    # A CLI run in the same process imports the command modules too.
    assert main(["synth", str(tmp_path / "p"), "--per-class", "1", "--image-size", "32"]) == 0
    for package, names in (
        (cxrmodels, ("train", "evaluate", "predict", "export", "search", "gradcam", "create_model")),
        (cxrdata, ("convert", "verify", "inspect", "load")),
    ):
        for name in names:
            value = getattr(package, name)
            assert callable(value) and not isinstance(value, type(sys)), f"{package.__name__}.{name}"
            assert value.__name__ == name


def test_no_module_is_named_like_a_name_its_package_exports():
    clashes = []
    for name, _ in _all_modules():
        parent, _, leaf = name.rpartition(".")
        if not parent:
            continue
        exported = getattr(importlib.import_module(parent), "__all__", ())
        if leaf in exported and leaf not in getattr(importlib.import_module(parent), "_SUBMODULES", ()):
            clashes.append(name)
    assert clashes == []


def test_every_public_name_resolves_and_is_listed():
    for package in (
        cxrdata,
        cxrmodels,
        cxrmodels.models,
        cxrmodels.training,
        cxrmodels.evaluation,
        cxrmodels.serving,
        cxrmodels.tuning,
        cxrdata.layers,
    ):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
        assert set(package.__all__) <= set(dir(package))


def _python_files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def test_cxrdata_never_imports_cxrmodels():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _python_files("cxrdata")
        if re.search(r"^\s*(from|import)\s+cxrmodels\b", p.read_text(), re.M)
    ]
    assert offenders == []


def test_private_upstream_apis_only_in_the_compatibility_module():
    pattern = re.compile(r"\b(keras|keras_tuner|tf_keras)\.src\b")
    offenders = []
    for folder in ("cxrdata", "cxrmodels", "benchmarks", "examples", "tests"):
        for path in _python_files(folder):
            if path.name in ("compat.py", "test_layout.py"):
                continue
            if pattern.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_cxr_help_imports_no_tensorflow_and_runs_no_benchmark():
    code = (
        "import sys\n"
        "from cxrmodels.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "for name in ('bench', 'train', 'convert', 'tune'):\n"
        "    try:\n"
        "        main([name, '--help'] if name != 'bench' else ['--version'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TF' if 'tensorflow' in sys.modules else 'NO-TF')\n"
        "print('BENCH' if 'input_pipeline' in sys.modules else 'NO-BENCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2:] == ["NO-TF", "NO-BENCH"]


def test_the_readme_layout_names_only_folders_and_modules_that_exist():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    folders = [line.split()[0] for line in block.splitlines() if line and not line.startswith(" ")]
    assert len(folders) >= 10
    for folder in folders:
        assert (ROOT / folder).is_dir(), folder
    # The modules the first lines name, folder by folder.
    for folder, names in (
        (
            "cxrdata",
            "sources dicom preprocess splits conversion beam_conversion records manifest "
            "verification pipeline synthetic graph_preprocess",
        ),
        ("cxrdata/utils", "io argument_validation output_dir figures lazy compat"),
        ("cxrmodels/tuning", "searcher hypermodel space tuners distribute search_folder"),
    ):
        for name in names.split():
            assert (ROOT / folder / f"{name}.py").is_file(), f"{folder}/{name}.py"


def _functions():
    import ast

    for package in ("cxrdata", "cxrmodels"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(ROOT), node


def _body_lines(node) -> int:
    """Lines of a function, its docstring excluded."""
    import ast

    lines = node.end_lineno - node.lineno + 1
    first = node.body[0] if node.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_library_function_is_over_100_lines():
    # Functions are kept under about 80 lines (docstring excluded); 100 is the hard line.
    long = [f"{path}:{node.lineno} {node.name} ({_body_lines(node)} lines)" for path, node in _functions()]
    long = [entry for entry, (_, node) in zip(long, _functions()) if _body_lines(node) > 100]
    assert long == []


def test_imports_inside_functions_say_why():
    # An import inside a function is there only to defer a heavy dependency (TensorFlow, Beam, ...) or
    # to break no cycle: the layers are import-linter contracts (`make lint`), so a deferred import of
    # a project module must say why in a comment on its line or the line above.
    import ast

    silent = []
    for path, node in _functions():
        source = (ROOT / path).read_text().splitlines()
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(
                ("cxrdata", "cxrmodels")
            ):
                line = source[inner.lineno - 1]
                above = source[inner.lineno - 2] if inner.lineno > 1 else ""
                if "#" not in line and not above.strip().startswith("#"):
                    silent.append(f"{path}:{inner.lineno} {line.strip()}")
    assert silent == []


def test_every_module_has_its_place_in_an_import_layer():
    # `make lint` runs import-linter on the layers in pyproject.toml; a module missing from them
    # would be unconstrained, so a new module must be given its layer.
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    for package in PACKAGES:
        contract = next(c for c in contracts if c.get("containers") == [package.__name__])
        named = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
        children = {info.name for info in pkgutil.iter_modules(package.__path__)}
        assert children - named == set(), package.__name__


def test_both_training_loops_share_one_core_and_the_multi_worker_loop_copies_none_of_it():
    import ast

    def calls(module: str) -> set[str]:
        tree = ast.parse((ROOT / "cxrmodels" / "training" / f"{module}.py").read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
        return names

    # One process (`trainer`) and several (`multi_worker`) call the same setup and finish...
    for module in ("trainer", "multi_worker"):
        assert {"prepare_run_dir", "open_session", "finish"} <= calls(module), module
    # ...and the multi-worker loop writes nothing of the run itself: history, checkpoints, the best
    # model, curves and config.json are the core's (`bookkeeping`, `run_state`, `lifecycle`).
    writes = {
        "write_history",
        "write_config",
        "save_model",
        "commit_epoch",
        "plot_learning_curves",
        "save_weights",
    }
    assert not writes & (calls("multi_worker") | calls("_distributed_loop"))
