"""The configs say what they are: docs/deviations.md's tables match the configs' lists, and
each listed field holds the value the table gives it. No JAX, no data: milliseconds."""

import pathlib

import pytest

from configs import default, recommended, synthetic

DEVIATIONS_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "deviations.md"


def _field(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _table_rows(header: str) -> list[tuple[str, ...]]:
  """The body rows of the docs/deviations.md table whose header line is ``header``, cells
  stripped of backticks; a dash cell reads as None."""
  lines = DEVIATIONS_DOC.read_text().splitlines()
  start = lines.index(header)
  assert lines[start + 1].startswith("| --- |"), lines[start + 1]
  rows = []
  for line in lines[start + 2 :]:
    if not line.startswith("|"):
      break
    cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split(" | ")]
    rows.append(tuple(None if c == "—" else c for c in cells))
  return rows


def _starts_with_value(text: str, value) -> bool:
  shown = str(value)
  return text == shown or (
    text.startswith(shown) and not text[len(shown)].isalnum() and text[len(shown)] != "."
  )


def test_the_docs_list_every_deviation_of_the_paper_config():
  rows = _table_rows("| field | reference code | ours | why |")
  assert rows == [tuple(d) for d in default.DEVIATIONS]
  config = default.get_config()
  for field, reference, ours, why in default.DEVIATIONS:
    assert reference and ours and why
    if field is not None:
      assert _starts_with_value(ours, _field(config, field)), (field, ours)


def test_the_docs_list_every_change_of_the_recommended_config():
  rows = _table_rows("| field | paper (`configs/default.py`) | recommended | why |")
  assert rows == [tuple(c) for c in recommended.CHANGES]
  paper, ours = default.get_config(), recommended.get_config()
  changed = {field for field, *_ in recommended.CHANGES}
  for field, paper_value, value, why in recommended.CHANGES:
    assert str(_field(paper, field)) == paper_value, field
    assert str(_field(ours, field)) == value, field
    assert why
  # Nothing else differs between the two configs.
  flat_paper = {f"{s}.{k}": v for s in paper for k, v in paper[s].items()}
  flat_ours = {f"{s}.{k}": v for s in ours for k, v in ours[s].items()}
  assert {k for k in flat_paper if flat_paper[k] != flat_ours[k]} == changed


@pytest.mark.parametrize(
  "field, value",
  [
    ("model.prior_expert", "none"),
    ("train.plateau_factor", 1.0),
    ("data.finding_rule", "reference"),
    ("model.mask_text_padding", False),
    ("model.embedding_zero_id", 0),
    ("data.require_complete", True),
  ],
)
def test_the_paper_config_is_the_reference_model(field, value):
  assert _field(default.get_config(), field) == value


def test_synthetic_is_built_on_the_recommended_variant():
  config = synthetic.get_config()
  for field, _, value, _ in recommended.CHANGES:
    assert str(_field(config, field)) == value


@pytest.mark.parametrize(
  "field, text, value",
  [
    ("data.require_complete", "false", False),  # bool("false") was True
    ("data.require_complete", "True", True),
    ("train.num_steps", "None", None),  # a None field: type(None)("7") failed
    ("train.num_steps", "7", 7),
    ("model.logvar_bound", "2.5", 2.5),
    ("train.plateau_factor", "0.5", 0.5),
    ("model.prior_expert", "full_set", "full_set"),
    ("eval.probes.repeats", "3", 3),
    ("model.image_encoder_widths", "(8, 16)", (8, 16)),
  ],
)
def test_recommended_parses_each_change_as_its_field(field, text, value):
  config = default.get_config()
  parsed = recommended.parse_value(config, field, text)
  assert parsed == value and type(parsed) is type(value)
  recommended.apply_changes(config, [(field, "paper", text, "why")])
  node = config
  for part in field.split("."):
    node = node[part]
  assert node == value


def test_recommended_refuses_a_value_that_is_not_the_fields():
  config = default.get_config()
  with pytest.raises(ValueError, match="data.require_complete is a bool"):
    recommended.parse_value(config, "data.require_complete", "yes")
  with pytest.raises(ValueError, match="not a Python literal"):
    recommended.parse_value(config, "train.plateau_factor", "half")
  with pytest.raises(TypeError):  # the ConfigDict's own type check
    recommended.apply_changes(config, [("train.plateau_factor", "", "'half'", "")])
