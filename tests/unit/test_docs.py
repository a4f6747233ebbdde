"""The documentation site (issue 36 item 3): `mkdocs build --strict` (what `make docs` runs) succeeds, so no page
links to a missing page or anchor, and the component reference generated from the registry at build time lists
every registered component of every kind with its options, every recipe and every config option."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly_and_its_reference_lists_every_component(tmp_path):
    from rlkit import registry
    from rlkit.config import iter_leaves, list_recipes

    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    nav = (ROOT / "mkdocs.yml").read_text()
    # what a fresh process registers (this one also holds the components other tests registered)
    code = ("import json; from rlkit import registry; print(json.dumps({k: {n: list(registry.resolve(k, n).options) "
            "for n, _ in registry.listing(k)} for k in registry.KINDS}))")
    fresh = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      cwd=ROOT).stdout)
    assert set(fresh) == set(registry.KINDS) and len(fresh["reward"]) > 10
    for kind, components in fresh.items():
        page = "reference/" + registry.plural(kind).replace(" ", "-")
        assert f"{page}.md" in nav, f"{kind}: its reference page is not in the site's nav"
        html = (site / page / "index.html").read_text()
        for name, options in components.items():
            assert f"<code>{name}</code>" in html, f"{kind} {name} is missing from {page}"
            for option in options:
                assert f"<code>{option}</code>" in html, f"{kind} {name}: option {option} is missing"
    recipes = (site / "reference" / "recipes" / "index.html").read_text()
    assert all(f"<code>{name}</code>" in recipes for name, _, _ in list_recipes())
    options = (site / "reference" / "options" / "index.html").read_text()
    assert all(f"<code>{key}</code>" in options for key, *_ in iter_leaves())
    # the README is the front page, the benchmarks and the changelog have pages, the guides are in
    for page in ("index.html", "benchmarks/index.html", "changelog/index.html", "guides/training/index.html",
                 "getting-started/index.html", "reference/cli/index.html"):
        assert (site / page).stat().st_size > 5000, page
    assert "rlkit export" in (site / "reference" / "cli" / "index.html").read_text()
