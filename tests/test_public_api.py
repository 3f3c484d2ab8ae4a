"""The public API: every export resolves and is documented, and user-facing code (README, docs, examples,
notebooks) imports only from it."""

import ast
import inspect
import json
import pathlib
import re
import subprocess
import sys

import pytest

import ilql_jax

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_every_export_resolves_and_is_documented():
    assert len(ilql_jax.__all__) == len(set(ilql_jax.__all__)) > 20
    for name in ilql_jax.__all__:
        obj = getattr(ilql_jax, name)
        assert obj.__module__.startswith("ilql_jax."), name  # ours, not a re-exported third-party object
        assert obj.__name__ == name  # exported under its own name, nothing renamed
        assert inspect.getdoc(obj), f"ilql_jax.{name} has no docstring"
        # The package docstring's catalogue gives it a one-line description.
        line = next((l for l in ilql_jax.__doc__.splitlines() if l.split()[:1] == [name]), None)
        assert line is not None and len(line.split()) > 3, f"ilql_jax.{name} is missing from the catalogue"
    assert set(ilql_jax.__all__) <= set(dir(ilql_jax))
    with pytest.raises(AttributeError, match="no_such_name"):
        ilql_jax.no_such_name  # noqa: B018


def test_import_is_lazy():
    # Importing the package (and so any submodule's parent) must not pull in JAX and the rest.
    code = "import sys, ilql_jax; print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def _notebook_code(path: pathlib.Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("!", "%")))  # shell / magics


def _private_uses(source: str) -> list[str]:
    """Imports of ilql_jax submodules, or names ilql_jax does not export, in `source`."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.startswith("ilql_jax.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ilql_jax":
            if node.module != "ilql_jax":
                bad.append(node.module)
            bad += [f"ilql_jax.{a.name}" for a in node.names if a.name not in ilql_jax.__all__]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ilql_jax"
              and node.attr not in ilql_jax.__all__):
            bad.append(f"ilql_jax.{node.attr}")
    return bad


def test_readme_examples_and_notebooks_use_only_the_public_api():
    sources = {f"README.md block {i}": b for i, b in enumerate(_python_blocks((REPO / "README.md").read_text()))}
    for doc in sorted((REPO / "docs").glob("*.md")):
        sources |= {f"{doc.relative_to(REPO)} block {i}": b for i, b in enumerate(_python_blocks(doc.read_text()))}
    assert "docs/python_api.md block 0" in sources, "the Python API page (linked from the README) has no python block"
    sources |= {str(p.relative_to(REPO)): p.read_text() for p in sorted((REPO / "examples").glob("*.py"))}
    sources |= {str(p.relative_to(REPO)): _notebook_code(p) for p in sorted((REPO / "notebooks").glob("*.ipynb"))}
    assert any(name.startswith("examples/") for name in sources)
    for name, source in sources.items():
        assert not _private_uses(source), f"{name} reaches past the public API: {_private_uses(source)}"


def test_private_use_is_detected():
    # The checker itself: each form of reaching past `ilql_jax`'s exports is caught.
    assert _private_uses("from ilql_jax import TrainConfig, generate_text\nimport ilql_jax\nilql_jax.sample") == []
    assert _private_uses("from ilql_jax.loop import train_and_evaluate") == ["ilql_jax.loop"]
    assert _private_uses("import ilql_jax.sampler") == ["ilql_jax.sampler"]
    assert _private_uses("from ilql_jax import losses") == ["ilql_jax.losses"]
    assert _private_uses("import ilql_jax\nilql_jax.train.make_train_step") == ["ilql_jax.train"]


def test_type_checking_imports_match_the_exports():
    # The `if TYPE_CHECKING:` block (for IDEs and type checkers) names exactly the exports, from the same modules.
    tree = ast.parse((REPO / "ilql_jax" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    imported = {a.name: node.module for node in block.body for a in node.names}
    assert imported == {name: module for module, names in ilql_jax._EXPORTS.items() for name in names}


def test_the_repository_stands_alone():
    # The algorithm's page is ours and linked from the front door; nothing tracked cites the design documents
    # this project was written from, which a reader of the repository alone cannot open.
    assert "(docs/algorithm.md)" in (REPO / "README.md").read_text()
    listing = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listing.returncode:
        pytest.skip("not a git checkout: the tracked files are unknown")
    tracked = listing.stdout.split()
    # Spelled in pieces so that this file does not cite them itself.
    outside = re.compile("|".join(["ILQL" + "_SPEC", "DESIGN" + r"\.md", r"\.\./" + "shared/"]))
    citing = [name for name in tracked if (REPO / name).suffix in {".py", ".md", ".toml", ".ipynb", ""}
              and (REPO / name).is_file() and outside.search((REPO / name).read_text(errors="replace"))]
    assert not citing, f"these files cite documents outside the repository: {citing}"


def test_the_readme_code_map_names_modules_that_exist():
    readme = (REPO / "README.md").read_text()
    code_map = readme.split("## How it fits together", 1)[1].split("```")[1]
    named = set(re.findall(r"\b([a-z_]+(?:/[a-z_]+)*\.py)\b", code_map))
    assert len(named) >= 10, named
    missing = sorted(name for name in named if not (REPO / "ilql_jax" / name).is_file())
    assert not missing, f"the README's code map names modules that do not exist: {missing}"
