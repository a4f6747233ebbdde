"""The house's rules, checked on the code as it is: the import-linter contracts of pyproject.toml (the layers, and
no vLLM/DeepSpeed/Triton under the reward and algorithm layers) hold with no exception listed, and no module of rlkit
takes part in an import cycle (a function-level import counts: grimp reads every import statement)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed (it is in the dev extra)"
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]
    assert "ignore_imports" not in (ROOT / "pyproject.toml").read_text()


def _cycles(graph, package: str = "rlkit") -> list[list[str]]:
    """Every module that can reach itself, with one shortest loop through it."""
    found = []
    for module in sorted(graph.modules):
        if not module.startswith(package):
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(package) and imported != module:
                back = graph.find_shortest_chain(importer=imported, imported=module)
                if back:
                    found.append([module, *back])
                    break
    return found


def test_no_module_of_rlkit_is_in_an_import_cycle():
    import grimp

    graph = grimp.build_graph("rlkit", cache_dir=None)
    loops = _cycles(graph)
    assert not loops, "import cycles:\n" + "\n".join(" -> ".join(loop) for loop in loops)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a two-module package that imports itself in a loop is reported."""
    import grimp

    pkg = tmp_path / "loopy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from loopy import b\n")
    (pkg / "b.py").write_text("def f():\n    from loopy import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("loopy", cache_dir=None)
    assert [loop[0] for loop in _cycles(graph, "loopy")] == ["loopy.a", "loopy.b"]


def test_a_config_edited_after_loading_builds_what_it_says():
    """The config check builds each component once and hands it to the run; an entry edited after loading (the
    Python API) must not get the instance built from its old options (issue 33: the laser recipe's target_tokens
    set from 4096 to 10 still gave a 100-token correct completion the bonus)."""
    from rlkit.config import load_config
    from rlkit.rewards.combine import RewardSet

    cfg = load_config(None, recipes=["laser"])
    term = next(t for t in cfg.rewards if t.name == "laser_step")
    term.kwargs["target_tokens"] = 10
    rewards = RewardSet.from_config(cfg.rewards)
    step = next(t for t in rewards.terms if t.label == "laser_step")
    scores = step.fn(["q"], ["a"], [[1] * 100], num_tokens=[100], finish_reason=["stop"], correct=[1.0])
    assert scores == [0.0]
    unchanged = load_config(None, recipes=["laser"])
    same = next(t for t in RewardSet.from_config(unchanged.rewards).terms if t.label == "laser_step")
    assert same.fn(["q"], ["a"], [[1] * 100], num_tokens=[100], finish_reason=["stop"], correct=[1.0]) == [0.5]
