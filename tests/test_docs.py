"""The documentation stays linked: every reference to docs/ in the code and every relative link
in the Markdown files resolves to a file and, where one is named, to a heading in it."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
# docs/<name>.md, optionally with #anchor, as code and docstrings cite it.
CODE_REFERENCE = re.compile(r"docs/([\w-]+\.md)(#[\w-]+)?")
# [text](target) in Markdown, target not a URL.
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
  """GitHub's anchor of a Markdown heading."""
  text = heading.strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  found, in_code = set(), False
  for line in path.read_text().splitlines():
    if line.startswith("```"):
      in_code = not in_code
    elif not in_code and line.startswith("#"):
      found.add(slug(line.lstrip("#")))
  return found


def _sources():
  for path in sorted(REPO.rglob("*")):
    if path.suffix in (".py", ".md", ".cfg") and ".git" not in path.parts and path.is_file():
      yield path


def test_slug_follows_github():
  assert slug("## Subsets, products of experts and the mixture".lstrip("#")) == (
    "subsets-products-of-experts-and-the-mixture"
  )
  assert slug("The paper's model, and where it differs") == "the-papers-model-and-where-it-differs"
  assert slug("`model.conv_impl` choices") == "modelconv_impl-choices"


def test_every_docs_reference_in_the_code_resolves():
  checked, broken = 0, []
  for path in _sources():
    for name, anchor in CODE_REFERENCE.findall(path.read_text()):
      target = DOCS / name
      checked += 1
      if not target.is_file():
        broken.append(f"{path.relative_to(REPO)}: docs/{name} does not exist")
      elif anchor and anchor[1:] not in anchors(target):
        broken.append(f"{path.relative_to(REPO)}: docs/{name}{anchor} names no heading")
  assert checked > 15  # the library's docstrings cite docs/model.md
  assert not broken, "\n".join(broken)


def test_every_relative_markdown_link_resolves():
  checked, broken = 0, []
  for path in [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]:
    for target in MARKDOWN_LINK.findall(path.read_text()):
      if re.match(r"[a-z]+:", target):
        continue  # a URL
      file_part, _, anchor = target.partition("#")
      resolved = (path.parent / file_part).resolve() if file_part else path
      checked += 1
      if not resolved.exists():
        broken.append(f"{path.relative_to(REPO)}: {target} does not exist")
      elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        broken.append(f"{path.relative_to(REPO)}: {target} names no heading")
  assert checked > 10
  assert not broken, "\n".join(broken)


def test_the_readme_links_every_doc_and_no_spec_outside_the_repo_is_cited():
  readme = (REPO / "README.md").read_text()
  for doc in sorted(DOCS.glob("*.md")):
    assert f"(docs/{doc.name})" in readme, doc.name
  cited = [
    str(p.relative_to(REPO)) for p in _sources() if re.search("SPEC" r" §|SPEC\.md", p.read_text())
  ]
  assert not cited, cited


def test_the_readme_and_the_package_docstring_name_exactly_the_public_names():
  import mopoe_jax  # pylint: disable=g-import-not-at-top

  readme = (REPO / "README.md").read_text()
  section = readme[readme.index("## Public names") : readme.index("## Documentation")]
  listed = set(re.findall(r"`(\w+)`", section)) - {"mopoe_jax"}
  assert listed == set(mopoe_jax.__all__), listed ^ set(mopoe_jax.__all__)
  docstring = {
    line.split("(")[0].strip()
    for line in mopoe_jax.__doc__.splitlines()
    if re.match(r"  \w+\(", line)
  }
  assert docstring == set(mopoe_jax.__all__), docstring ^ set(mopoe_jax.__all__)
