"""MkDocs hooks of the documentation site (`make docs`, issue 36 item 3).

Before every build the pages that must not drift are generated into the docs folder (all git-ignored):

- ``reference/<kind>.md`` for every kind of the registry (rlkit.registry.KINDS): every component with its full
  docstring (formula, paper and equation), its options (type and default) and the declarations that differ from its
  kind's defaults; ``reference/recipes.md`` (each recipe's header and YAML), ``reference/options.md`` (every config
  option, from the schema that also builds ``rlkit train --help``), ``reference/cli.md`` (each command's ``--help``);
- ``index.md`` from README.md (the front page), ``benchmarks.md``, ``changelog.md`` and ``license.md`` from the files
  of the repository root.

Links: the pages are written to read on GitHub too, so a link may leave the docs folder (``../BENCHMARKS.md``,
``../../rlkit/recipes/dler.yaml``). ``on_page_markdown`` maps the root files that have a page here to that page and
turns a link to any other repository file into its path in code, so ``mkdocs build --strict`` finds no broken link.
"""

from __future__ import annotations

import inspect
import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# repository files that have a page on the site
PAGES = {"README.md": "index.md", "BENCHMARKS.md": "benchmarks.md", "CHANGELOG.md": "changelog.md",
         "LICENSE": "license.md"}
LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")


def page_name(kind: str) -> str:
    from rlkit import registry

    return "reference/" + registry.plural(kind).replace(" ", "-") + ".md"


def _type(tp) -> str:
    import typing

    if tp is inspect.Parameter.empty:
        return "any"
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(tp))
    return (getattr(tp, "__name__", None) or str(tp)).replace("typing.", "").replace("|", "\\|")


def _kind_page(kind: str) -> str:
    from rlkit import registry

    title = registry.plural(kind)
    out = [f"# {title[0].upper() + title[1:]}", "",
           f"Generated from the registry when the site was built (`rlkit components {kind}` prints the same). "
           f"Installed packages add {title} through the entry-point group `{registry.KINDS[kind][0]}`.", ""]
    for name, _ in registry.listing(kind):
        out += [f"## `{name}`", ""]
        try:
            entry = registry.resolve(kind, name)
        except Exception as e:  # a broken plugin is listed with why
            out += [f"Cannot be loaded here: {e}", ""]
            continue
        doc = inspect.getdoc(entry.obj) or entry.doc or "(no docstring)"
        out += [doc.replace("\n", "  \n") if "|" not in doc else doc, ""]
        if entry.options:
            out += ["| option | type | default |", "|---|---|---|"]
            for p in entry.options.values():
                default = "(required)" if p.default is p.empty else f"`{p.default!r}`"
                out.append(f"| `{p.name}` | {_type(p.annotation)} | {default} |")
            out.append("")
        if declared := registry.declarations(entry):
            out += ["Declares: " + ", ".join(f"`{d}`" for d in declared), ""]
    return "\n".join(out) + "\n"


def _recipes_page() -> str:
    from rlkit.config.load import RECIPES_DIR, list_recipes

    out = ["# Recipes", "", "Generated from `rlkit/recipes/*.yaml` (`rlkit recipes` lists the same). A recipe is a "
           "preset under your config: `rlkit train --recipe NAME [my.yaml]`.", ""]
    for name, desc, paper in list_recipes():
        out += [f"## `{name}`", "", desc, "", f"Paper: {paper}" if paper else "", "", "```yaml",
                (RECIPES_DIR / f"{name}.yaml").read_text().rstrip(), "```", ""]
    return "\n".join(out) + "\n"


def _options_page() -> str:
    from rlkit.config import iter_leaves

    out = ["# Configuration options", "", "Every option of the config tree, from the schema that also builds "
           "`rlkit train --help`: set it in a YAML file (`section: {key: value}`) or on the command line "
           "(`--section.key=value`).", "", "| option | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, help_ in iter_leaves():
        text = help_.replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{key}` | {_type(tp)} | `{default!r}` | {text} |".replace("`''`", "`\"\"`"))
    return "\n".join(out) + "\n"


def _cli_page() -> str:
    import argparse

    from rlkit.cli import build_parser

    parser, _ = build_parser()
    out = ["# Command line", "", "Each command's `--help`, as the installed `rlkit` prints it.", "", "```",
           parser.format_help().rstrip(), "```", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name == "rewards":  # the alias of components
                    continue
                out += [f"## `rlkit {name}`", "", "```", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out) + "\n"


def _root_page(name: str) -> str:
    text = (ROOT / name).read_text()
    if name == "LICENSE":
        return "# License\n\n```\n" + text.rstrip() + "\n```\n"
    # written from the repository root: seen from docs/, every relative link goes one level up
    return LINK.sub(lambda m: m.group(0) if _external(m.group(2)) else f"{m.group(1)}(../{m.group(2)})", text)


def _external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target))


def generated() -> dict[str, str]:
    """Every generated page: path under docs/ -> markdown."""
    from rlkit import registry

    pages = {page: _root_page(src) for src, page in PAGES.items()}
    pages.update({page_name(kind): _kind_page(kind) for kind in registry.KINDS})
    pages["reference/recipes.md"] = _recipes_page()
    pages["reference/options.md"] = _options_page()
    pages["reference/cli.md"] = _cli_page()
    return pages


def on_pre_build(config) -> None:
    for rel, text in generated().items():
        path = DOCS / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def on_page_markdown(markdown: str, page, config, files) -> str:
    here = posixpath.dirname(page.file.src_uri)

    def fix(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if _external(target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        repo = posixpath.normpath(posixpath.join("docs", here, path))
        page_path = repo[len("docs/"):] if repo.startswith("docs/") else PAGES.get(repo)
        if page_path is not None:
            rel = posixpath.relpath(page_path, here or ".")
            return f"{label}({rel}{'#' + anchor if anchor else ''})"
        text = label[1:-1] if not label.startswith("!") else label[2:-1]
        return f"{text} (`{repo}` in the repository)"

    return LINK.sub(fix, markdown)
