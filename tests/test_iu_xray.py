"""The iu_xray tfds builder on a small fake Indiana University collection (tests/iu_fake.py)."""

import collections
import csv
import os
import subprocess
import sys

from conftest import examples_by_study, prepare_from, run_prepare_command, subprocess_env
import iu_fake
import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import features, study_writer
from input_pipeline.iu_xray import collection, mesh_labels
from input_pipeline.iu_xray import iu_xray_dataset_builder as iub
from mopoe_jax.data import text as text_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE, TEXT_LENGTH, MIN_COUNT = 32, 16, 1
# The special cases, and 16 clean studies (ids 100-115) so that every split has some: 115 goes
# to validation, 105 and 106 to test (the pinned hash below).
STUDIES = iu_fake.STUDIES + iu_fake.bulk_studies(16)
STUDY = {s[0]: s for s in STUDIES}
BULK = [s[0] for s in STUDIES[len(iu_fake.STUDIES) :]]
LABEL = {name: i for i, name in enumerate(features.LABELS)}


def tiny_config(name, **kwargs):
  return iub.IuXrayConfig(
    name=name,
    image_size=IMAGE_SIZE,
    text_length=TEXT_LENGTH,
    min_count=MIN_COUNT,
    num_workers=2,
    **kwargs,
  )


def build(manual_dir, data_dir, config):
  return prepare_from(iub.Builder(config=config, data_dir=str(data_dir)), manual_dir)


examples = examples_by_study


def skip_rows(builder):
  """{(split, study_id, image, reason, outcome)} of all three skip reports."""
  rows = set()
  for split in study_writer.SPLITS:
    with open(os.path.join(builder.data_dir, f"skip_report_{split}.csv")) as f:
      table = list(csv.reader(f))
    assert tuple(table[0]) == collection.SKIP_REPORT_COLUMNS
    rows |= {(r[0], r[2], r[3], r[4], r[5]) for r in table[1:]}
  return rows


def split(study_id):
  return collection.split_of(study_id, 0, (0.7, 0.1, 0.2))


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
  return iu_fake.write_fake_iu(str(tmp_path_factory.mktemp("iu") / "archives"), STUDIES)


@pytest.fixture(scope="module")
def paper(fake_tree, tmp_path_factory):
  builder = build(fake_tree, tmp_path_factory.mktemp("iu_paper"), tiny_config("tiny_paper"))
  return builder, examples(builder)


@pytest.fixture(scope="module")
def all_studies(fake_tree, tmp_path_factory):
  builder = build(
    fake_tree, tmp_path_factory.mktemp("iu_all"), tiny_config("tiny_all", selection="all_studies")
  )
  return builder, examples(builder)


def flat(ex):
  return {study_id: e for split_examples in ex.values() for study_id, e in split_examples.items()}


# ----------------------------------------------------------------------------------------------
# Names, labels, splits.


def test_one_image_key_for_the_xml_the_archive_and_both_tables():
  for names, key in (
    (
      (
        "CXR2_IM-0652-1001",
        "NLMCXR_png/CXR2_IM-0652-1001.png",
        "2_IM-0652-1001.dcm.png",
        "cxr2_IM-0652-1001.PNG",
        "./CXR2_IM-0652-1001.png",
      ),
      "2_IM-0652-1001",
    ),
    # Report 1 names its images with the number twice; the Kaggle table once.
    (
      ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-3001.png", "1_IM-0001-3001.dcm.png"),
      "1_IM-0001-3001",
    ),
    (("CXR2372_IM-0933-0001-0001", "2372_IM-0933-0001-0001.dcm.png"), "2372_IM-0933-0001-0001"),
  ):
    assert {collection.image_key(n) for n in names} == {key}, names
  assert collection.image_key("CXR10_IM-0002-1001") != collection.image_key("CXR1_IM-0002-1001")
  assert collection.image_key("CXR11_1_IM-0001-1001") == "11_1_IM-0001-1001"  # not repeated


def test_mesh_terms_map_to_the_labels_of_the_table():
  labels = mesh_labels.labels_from_terms(
    ["Cardiomegaly/mild", "Pulmonary Atelectasis/base/left", "Calcified Granuloma/lung"]
  )
  assert {features.LABELS[i] for i in np.flatnonzero(labels == 1.0)} == {
    "Cardiomegaly",
    "Atelectasis",
  }
  assert np.isnan(labels[LABEL["No Finding"]]) and np.isnan(labels[LABEL["Edema"]])
  assert not np.any(labels == 0.0) and not np.any(labels == -1.0)  # never negative or uncertain
  # A qualifier rule needs its qualifier; case does not matter.
  assert mesh_labels.labels_of_term("mediastinum/PROMINENT") == {"Enlarged Cardiomediastinum"}
  assert mesh_labels.labels_of_term("Mediastinum/left") == set()
  assert mesh_labels.labels_of_term("Hydropneumothorax") == {"Pneumothorax", "Pleural Effusion"}
  # normal: No Finding, unless one of the 13 others (Finding's columns) is set.
  normal = mesh_labels.labels_from_terms(["normal"])
  assert normal[LABEL["No Finding"]] == 1.0
  assert np.isnan(np.delete(normal, LABEL["No Finding"])).all()
  assert np.isnan(mesh_labels.labels_from_terms(["normal", "Stents"])[LABEL["No Finding"]])
  assert np.isnan(mesh_labels.labels_from_terms(["normal", "Opacity/lung"])[LABEL["No Finding"]])
  assert features.finding_from_labels(labels) == 1 and features.finding_from_labels(normal) == 0
  assert np.isnan(mesh_labels.labels_from_terms(["No Indexing"])).all()
  assert mesh_labels.unmapped_terms(
    [
      ["Calcified Granuloma/lung", "normal"],
      ["calcified granuloma", "No Indexing"],
      ["Aorta/tortuous"],
    ]
  ) == {"calcified granuloma": 2, "aorta": 1}


def test_every_label_of_the_rules_is_a_label_column():
  assert {label for label, _, _ in mesh_labels.RULES} <= set(features.LABELS)
  # Every one of the 14 columns can be set, the 13 pathologies and No Finding.
  assert {label for label, _, _ in mesh_labels.RULES} == set(features.LABELS)


def test_the_docs_show_the_rules_as_the_code_applies_them():
  lines = open(os.path.join(REPO_ROOT, "docs", "iu_xray.md")).read().splitlines()
  start = lines.index("| label | MeSH major term | qualifier |")
  rows = []
  for line in lines[start + 2 :]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
    rows.append((cells[0], cells[1], None if cells[2] == "—" else cells[2]))
  assert rows == list(mesh_labels.RULES)


def test_split_is_deterministic_follows_the_fractions_and_the_seed():
  ids = [str(i) for i in range(1, 20001)]
  counts = collections.Counter(collection.split_of(i, 0, (0.7, 0.1, 0.2)) for i in ids)
  for name, share in zip(study_writer.SPLITS, (0.7, 0.1, 0.2)):
    assert abs(counts[name] / len(ids) - share) < 0.01, counts  # binomial sd < 0.0033
  seed_0 = [collection.split_of(i, 0, (0.7, 0.1, 0.2)) for i in ids[:500]]
  seed_1 = [collection.split_of(i, 1, (0.7, 0.1, 0.2)) for i in ids[:500]]
  assert 0.3 < np.mean([a != b for a, b in zip(seed_0, seed_1)]) < 0.6  # 2(.07+.01+.04)=.46
  # Pinned, so that a change of the hash (which would move reports between splits) is seen:
  # sha256(b"iu_xray/0/1") starts 91d58ef36d69ae75, 0.5697 of 2**64: train.
  assert [split(str(i))[:2] for i in range(1, 21)] == [
    "tr",
    "tr",
    "tr",
    "tr",
    "tr",
    "te",
    "tr",
    "te",
    "tr",
    "tr",
    "tr",
    "tr",
    "tr",
    "tr",
    "te",
    "tr",
    "tr",
    "tr",
    "tr",
    "tr",
  ]
  assert {collection.split_of(i, 0, (1.0, 0.0, 0.0)) for i in ids[:200]} == {"train"}


def test_bad_config_values_are_named():
  with pytest.raises(ValueError, match="'both'"):
    iub.IuXrayConfig(name="x", selection="both")
  with pytest.raises(ValueError, match="split_fractions"):
    iub.IuXrayConfig(name="x", split_fractions=(0.8, 0.1, 0.2))
  with pytest.raises(ValueError, match="split_fractions"):
    iub.IuXrayConfig(name="x", split_fractions=(0.8, 0.0, 0.2))


# ----------------------------------------------------------------------------------------------
# The paper selection on the fake tree.


def test_paper_selects_frontal_lateral_findings(paper):
  builder, ex = paper
  written = flat(ex)
  assert sorted(written, key=int) == ["1", "2", "6", "7"] + BULK
  for study_id, e in written.items():
    assert study_id in ex[split(study_id)]
    assert e["available"].tolist() == [True, True, True]
    assert e["frontal"].shape == e["lateral"].shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
  assert builder.info.metadata["split"]["seed"] == 0
  assert builder.info.metadata["split"]["fractions"] == [0.7, 0.1, 0.2]
  listed = collections.Counter(split(s[0]) for s in STUDIES)
  assert builder.info.metadata["split"]["reports"] == {s: listed[s] for s in study_writer.SPLITS}


def test_views_come_from_the_projections_table(paper):
  _, ex = paper
  e = flat(ex)
  # Uniform grey images: the stored frontal / lateral are the table's Frontal / Lateral files.
  for study_id, frontal, lateral in (("1", 200, 60), ("6", 110, 30), ("7", 100, 20)):
    assert np.all(e[study_id]["frontal"] == frontal) and np.all(e[study_id]["lateral"] == lateral)
  assert e["7"]["frontal_image"] == b"CXR7_IM-2263-1001"
  assert e["7"]["lateral_image"] == b"CXR7_IM-2263-2001"
  # Study 2: the first frontal by name is a corrupt PNG, so the second is used.
  assert e["2"]["frontal_image"] == b"CXR2_IM-0652-1002" and np.all(e["2"]["frontal"] == 180)


def test_labels_and_text(paper):
  builder, ex = paper
  e = flat(ex)
  assert e["1"]["labels"][LABEL["No Finding"]] == 1.0 and e["1"]["finding"] == 0
  assert {features.LABELS[i] for i in np.flatnonzero(e["7"]["labels"] == 1.0)} == {
    "Pleural Effusion",
    "Support Devices",
  }
  assert e["7"]["finding"] == 1
  assert np.isnan(e["6"]["labels"]).all()  # no <MeSH>: labels_missing, kept
  assert e["1"]["report"] == b"heart size normal. lungs are clear."
  vocabulary = text_lib.Vocabulary(builder.info.metadata["vocabulary"])
  np.testing.assert_array_equal(
    e["1"]["text"], vocabulary.encode("heart size normal. lungs are clear.", TEXT_LENGTH)
  )
  # From the reports of the train studies written: not 9's (selected, but its only frontal PNG
  # is missing, so it is skipped once its images load), as in mimic_cxr.
  assert split("9") == "train"
  train_texts = [STUDY[s][2].lower() for s in ["1", "2", "6", "7"] + BULK if split(s) == "train"]
  assert (
    builder.info.metadata["vocabulary"]
    == text_lib.Vocabulary.build(train_texts, min_count=MIN_COUNT).words
  )
  unmapped = builder.info.metadata["labels"]["unmapped_terms"]
  assert unmapped == {"calcified granuloma": 2}


# A train report whose only frontal PNG does not decode (so the paper selection skips it once its
# images load), and whose FINDINGS alone hold "bronchiectasis" (twice: min_count is 1).
def _bronchiectasis_study(frontal_content):
  return (
    "11",
    [("CXR11_IM-0100-1001", "Frontal", frontal_content), ("CXR11_IM-0100-2001", "Lateral", 90)],
    "Bronchiectasis at both bases. The bronchiectasis is unchanged.",
    "Bronchiectasis.",
    ["Bronchiectasis"],
  )


@pytest.mark.parametrize("frontal_content", ["corrupt", 150])
def test_a_study_skipped_for_its_image_adds_no_words(frontal_content, paper, tmp_path):
  assert split("11") == "train"
  manual_dir = iu_fake.write_fake_iu(
    str(tmp_path / "m"), STUDIES + [_bronchiectasis_study(frontal_content)]
  )
  builder = build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))
  words = builder.info.metadata["vocabulary"]
  broken = frontal_content == "corrupt"
  assert ("11" in examples(builder)["train"]) is not broken
  row = ("train", "11", "CXR11_IM-0100-1001", "image_unreadable", "study_skipped")
  assert (row in skip_rows(builder)) is broken
  assert ("bronchiectasis" in words) is not broken
  if broken:  # the skipped report changes nothing: the vocabulary of the collection without it
    assert words == paper[0].info.metadata["vocabulary"]
  else:
    train_texts = [
      STUDY[s][2].lower() for s in ["1", "2", "6", "7"] + BULK if split(s) == "train"
    ] + [_bronchiectasis_study(150)[2].lower()]
    assert words == text_lib.Vocabulary.build(train_texts, min_count=MIN_COUNT).words


def test_paper_skip_report(paper):
  builder, _ = paper
  expected = {
    ("2", "CXR2_IM-0652-1001", "image_unreadable", "other_image_used"),
    ("3", "", "no_lateral", "study_skipped"),
    ("4", "", "section_empty", "study_skipped"),  # no FINDINGS element
    ("5", "", "section_empty", "study_skipped"),  # an empty one
    ("6", "", "labels_missing", "kept"),
    ("7", "CXR7_IM-2263-3001", "view_unknown", "not_used"),
    ("8", "", "report_unreadable", "study_skipped"),
    ("9", "CXR9_IM-2407-1001", "image_missing", "study_skipped"),
    ("10", "", "no_frontal", "study_skipped"),
  }
  assert skip_rows(builder) == {(split(s), s, *rest) for s, *rest in expected}
  skipped = builder.info.metadata["skipped"]
  assert sum(v["written"] for v in skipped.values()) == 4 + len(BULK)
  assert sum(v["skipped_studies"] for v in skipped.values()) == 6
  assert sum(v["listed"] for v in skipped.values()) == len(STUDIES)


# ----------------------------------------------------------------------------------------------
# all_studies, unpacked folders, the impression, bad manual dirs.


def test_all_studies_available_flags(all_studies):
  builder, ex = all_studies
  available = {s: e["available"].tolist() for s, e in flat(ex).items() if s not in BULK}
  assert available == {
    "1": [True, True, True],
    "2": [True, True, True],
    "3": [True, False, True],  # no lateral image
    "4": [True, True, False],  # no FINDINGS
    "5": [True, True, False],  # empty FINDINGS
    "6": [True, True, True],
    "7": [True, True, True],
    "9": [False, True, True],  # the frontal PNG is missing
    "10": [False, False, True],  # no image at all
  }
  assert ("9", "CXR9_IM-2407-1001", "image_missing", "modality_unavailable") in {
    r[1:] for r in skip_rows(builder)
  }
  assert not flat(ex)["9"]["frontal"].any() and flat(ex)["9"]["frontal_image"] == b""


def test_unpacked_folders_and_the_archive_table_names_give_the_same_dataset(
  paper, tmp_path_factory
):
  manual_dir = iu_fake.write_fake_iu(
    str(tmp_path_factory.mktemp("iu_folders") / "m"),
    STUDIES,
    reports_as="folder",
    images_as="folder",
    kaggle_names=False,
  )
  builder = build(manual_dir, tmp_path_factory.mktemp("iu_folder_data"), tiny_config("tiny_paper"))
  unpacked, archived = flat(examples(builder)), flat(paper[1])
  assert sorted(unpacked) == sorted(archived)
  for study_id, e in archived.items():
    for key in ("frontal", "lateral", "text", "report", "available", "labels", "frontal_image"):
      np.testing.assert_array_equal(unpacked[study_id][key], e[key])
  assert skip_rows(builder) == skip_rows(paper[0])


def test_impression_where_findings_are_empty(fake_tree, tmp_path):
  builder = build(
    fake_tree, tmp_path, tiny_config("tiny_impression", section="findings_or_impression")
  )
  e = flat(examples(builder))
  assert e["4"]["report"] == b"no active disease." and e["5"]["report"] == b"old granuloma."
  assert e["1"]["report"] == b"heart size normal. lungs are clear."  # FINDINGS first


@pytest.mark.parametrize(
  "drop,where",
  [
    ("NLMCXR_reports.tgz", r"openi\.nlm\.nih\.gov"),
    ("NLMCXR_png.tgz", r"openi\.nlm\.nih\.gov"),
    ("indiana_projections.csv", "kaggle"),
  ],
)
def test_a_missing_input_is_named(fake_tree, tmp_path, drop, where):
  manual_dir = tmp_path / "m"
  manual_dir.mkdir()
  for name in os.listdir(fake_tree):
    if name != drop:
      os.symlink(os.path.join(fake_tree, name), manual_dir / name)
  with pytest.raises(FileNotFoundError, match=rf"(?s)lacks:\n  {drop}.*{where}"):
    build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))


def test_a_broken_archive_and_a_bad_table_are_named(fake_tree, tmp_path):
  manual_dir = tmp_path / "m"
  manual_dir.mkdir()
  for name in os.listdir(fake_tree):
    os.symlink(os.path.join(fake_tree, name), manual_dir / name)
  os.remove(manual_dir / "indiana_projections.csv")
  (manual_dir / "indiana_projections.csv").write_text("uid,file,view\n1,a.png,Frontal\n")
  with pytest.raises(ValueError, match=r"indiana_projections\.csv: missing column 'filename'"):
    build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))
  os.remove(manual_dir / "indiana_projections.csv")
  os.symlink(
    os.path.join(fake_tree, "indiana_projections.csv"), manual_dir / "indiana_projections.csv"
  )
  os.remove(manual_dir / "NLMCXR_reports.tgz")
  data = open(os.path.join(fake_tree, "NLMCXR_reports.tgz"), "rb").read()
  (manual_dir / "NLMCXR_reports.tgz").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"NLMCXR_reports\.tgz is not a readable \.tgz"):
    build(manual_dir, tmp_path / "data2", tiny_config("tiny_paper"))
  # Damage inside the image archive (not at its end): named too.
  os.remove(manual_dir / "NLMCXR_reports.tgz")
  os.symlink(os.path.join(fake_tree, "NLMCXR_reports.tgz"), manual_dir / "NLMCXR_reports.tgz")
  os.remove(manual_dir / "NLMCXR_png.tgz")
  data = bytearray(open(os.path.join(fake_tree, "NLMCXR_png.tgz"), "rb").read())
  middle = len(data) // 2
  data[middle : middle + 64] = bytes(64)
  (manual_dir / "NLMCXR_png.tgz").write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"NLMCXR_png\.tgz is not a readable \.tgz archive"):
    build(manual_dir, tmp_path / "data3", tiny_config("tiny_paper"))


def test_a_split_left_empty_is_named_with_its_reasons(tmp_path):
  # Reports 1-10 alone: none goes to validation (the pinned hash), so that split is empty.
  manual_dir = iu_fake.write_fake_iu(str(tmp_path / "m"), iu_fake.STUDIES)
  with pytest.raises(
    ValueError,
    match=r"No report of the validation split passes the 'paper' "
    r"selection \(0 reports in the split",
  ):
    build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))


def test_missing_manual_dir_shows_the_instructions(tmp_path):
  with pytest.raises(AssertionError, match=r"(?s)does not exist.*NLMCXR_png\.tgz"):
    build(tmp_path / "nowhere", tmp_path / "data", tiny_config("tiny_paper"))


# ----------------------------------------------------------------------------------------------
# The documented commands.


@pytest.mark.slow  # the build command in a subprocess
def test_documented_command_builds_the_paper_config(fake_tree, tmp_path):
  """`python -m input_pipeline.iu_xray --config=paper --manual_dir=... --data_dir=...`."""
  stderr, builder = run_prepare_command("iu_xray", fake_tree, tmp_path / "tfds")
  assert "iu_xray/paper build done: wrote" in stderr
  assert sum(s.num_examples for s in builder.info.splits.values()) == 4 + len(BULK)
  e = next(iter(tfds.as_numpy(builder.as_dataset(split=split("1")))))
  assert e["frontal"].shape == (128, 128, 1) and e["text"].shape == (128,)


def test_a_trained_model_reads_the_source_files_as_the_builder_stored_them(paper, tmp_path):
  """mopoe_jax.inference on the same PNGs gives the builder's arrays."""
  from mopoe_jax import inference  # pylint: disable=g-import-not-at-top

  _, ex = paper
  e = flat(ex)
  for study_id, stem, key in (
    ("2", "CXR2_IM-0652-1002", "frontal"),
    ("7", "CXR7_IM-2263-2001", "lateral"),
  ):
    path = tmp_path / f"{stem}.png"
    value = dict((s, c) for s, _, c in STUDY[study_id][1])[stem]
    path.write_bytes(iu_fake.png_bytes(value))
    np.testing.assert_array_equal(inference.read_image(str(path), IMAGE_SIZE), e[study_id][key])
  report = tmp_path / "report.txt"
  report.write_text(f"FINDINGS: {STUDY['1'][2]}\nIMPRESSION: {STUDY['1'][3]}\n")
  assert inference.read_report(str(report)) == e["1"]["report"].decode()
  # The collection's own XML file, as report.xml of a study folder, reads the same.
  folder = tmp_path / "study_7"
  folder.mkdir()
  (folder / "report.xml").write_text(iu_fake.report_xml(*STUDY["7"]))
  study = inference.read_study(str(folder), IMAGE_SIZE)
  assert study.present == ("text",) and study.report == e["7"]["report"].decode()


def test_user_xml_reports_fall_back_to_the_impression_and_name_their_problems(tmp_path):
  from mopoe_jax import inference  # pylint: disable=g-import-not-at-top

  path = tmp_path / "report.xml"
  path.write_text(iu_fake.report_xml(*STUDY["5"]))  # empty FINDINGS: the IMPRESSION is read
  assert inference.read_report(str(path)) == "old granuloma."
  path.write_text(iu_fake.report_xml(*STUDY["2"])[:300])
  with pytest.raises(inference.StudyError, match=r"report\.xml: not well-formed XML"):
    inference.read_report(str(path))
  path.write_text(iu_fake.report_xml("3", [], "", "", ["normal"]))
  with pytest.raises(inference.StudyError, match="has sections but no FINDINGS or IMPRESSION"):
    inference.read_report(str(path))


# ----------------------------------------------------------------------------------------------
# main.py --config=configs/iu_xray.py on the fake collection.

# configs/iu_xray.py (the paper's model, 128 px, 128 tokens) at minimal widths and sizes, on
# the frontal view and the report, without image grids: the lateral view's networks are the
# frontal's and the grids are tested on synthetic_cxr, and at 128 px their programs were most of
# the run (126 CPU-s with all three modalities and grids, 72 without; 2-core AMD EPYC, jax 0.10.2).
_TINY_RUN = (
  "--config.data.modalities=('frontal','text')",
  "--config.model.rec_weights=(0.5,0.5)",
  "--config.model.latent_dim=8",
  "--config.model.image_encoder_widths=(4,4,4,4,4,4)",
  "--config.model.image_decoder_widths=(4,4,4,4,4,4)",
  "--config.model.text_encoder_widths=(8,8,8,8,8,8,8)",
  "--config.model.text_decoder_widths=(8,8,8,8,8,8,8)",
  "--config.model.conv_impl=xla",
  "--config.train.batch_size=16",
  "--config.train.num_steps=6",
  "--config.train.warmup_steps=2",
  "--config.train.log_every_steps=3",
  "--config.train.eval_every_steps=6",
  "--config.train.checkpoint_every_steps=6",
  "--config.train.image_grid_studies=0",  # the grids: tests/test_train.py
  "--config.eval.batch_size=16",
  "--config.eval.probes.train_examples=40",
  "--config.eval.probes.repeats=2",
  "--config.eval.probes.min_test_examples=5",
  "--config.eval.generation.studies=2",
  "--config.eval.generation.prior_samples=2",
  "--config.eval.likelihood.samples=2",
  "--config.eval.likelihood.examples=4",
  "--config.eval.likelihood.batch_size=4",
  # Table 1 and the coherence classifiers (the parts that read the labels); the generation
  # and likelihood evaluators do not depend on the dataset and are tested on synthetic_cxr.
  "--config.eval.evaluators=('probes','coherence')",
  "--config.classifier.image_widths=(4,4,4)",
  "--config.classifier.text_embed=4",
  "--config.classifier.text_widths=(4,)",
  "--config.classifier.num_steps=4",
  "--config.classifier.batch_size=8",
  "--config.classifier.shuffle_buffer_size=32",
)


@pytest.mark.slow  # main.py in a subprocess: prepares, trains, evaluates
def test_main_trains_and_evaluates_on_the_collection(tmp_path, subprocess_cache_dir):
  manual_dir = iu_fake.write_fake_iu(
    str(tmp_path / "manual"), iu_fake.STUDIES + iu_fake.bulk_studies(80)
  )
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
  command = [
    sys.executable,
    os.path.join(REPO_ROOT, "main.py"),
    "--config=" + os.path.join(REPO_ROOT, "configs", "iu_xray.py"),
    f"--workdir={workdir}",
    f"--config.data.manual_dir={manual_dir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.train.compilation_cache_dir={subprocess_cache_dir}",
    *_TINY_RUN,
  ]
  result = subprocess.run(
    command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900
  )
  assert result.returncode == 0, result.stderr[-5000:]
  assert "iu_xray/paper build done" in result.stderr
  assert os.path.isdir(workdir / "checkpoints" / "6")
  probes = (workdir / "eval" / "probes.md").read_text()
  assert "frontal" in probes and "Finding" in probes
  assert (workdir / "model.json").exists()
