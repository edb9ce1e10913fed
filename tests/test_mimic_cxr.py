"""The mimic_cxr tfds builder on a small fake MIMIC-CXR-JPG + reports tree with the real layout."""

import csv
import gzip
import io
import math
import os
import shutil
import types
import zipfile

from conftest import examples_by_study, prepare_from, run_prepare_command
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from input_pipeline import features, study_writer
from input_pipeline.mimic_cxr import mimic_cxr_dataset_builder as mcb
from input_pipeline.mimic_cxr import selection
from mopoe_jax.data import report_text as reports
from mopoe_jax.data import text as text_lib

IMAGE_SIZE, TEXT_LENGTH, MIN_COUNT = 32, 16, 1

METADATA_HEADER = (
  "dicom_id",
  "subject_id",
  "study_id",
  "PerformedProcedureStepDescription",
  "ViewPosition",
  "Rows",
  "Columns",
  "StudyDate",
  "StudyTime",
  "ProcedureCodeSequence_CodeMeaning",
  "ViewCodeSequence_CodeMeaning",
  "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_HEADER = ("dicom_id", "study_id", "subject_id", "split")
LABEL_HEADER = ("subject_id", "study_id") + features.LABELS

# ----------------------------------------------------------------------------------------------
# The fake tree. Images: (dicom_id, ViewPosition, StudyDate, StudyTime, content), content one of
#   "bands"  300x240: grey 30 px | bright | dark | grey 30 px (only a centre crop has no grey)
#   "tall"   240x300: grey | bright top half | dark bottom half | grey
#   an int  a uniform 300x240 image of that value
#   "truncated" a JPEG cut after 40% of its bytes;  "absent" listed but no file.

STUDIES = [
  # (subject, study, split, images, findings, impression, labels {name: value} or None)
  (
    "10000032",
    "50000001",
    "train",
    [
      ("d01-pa", "PA", "21800506", "213014.531", "bands"),
      ("d01-lat", "LATERAL", "21800506", "213014.531", "tall"),
    ],
    "The lungs are clear. No pleural effusion or pneumothorax. The heart size is normal.",
    "No acute cardiopulmonary process.",
    {"No Finding": "1.0"},
  ),
  # Two PA images: the earlier StudyTime wins although its dicom_id sorts last.
  (
    "10000032",
    "50000002",
    "train",
    [
      ("d02-a-pa", "PA", "21800601", "120000", 200),
      ("d02-b-pa", "PA", "21800601", "090000.5", 40),
      ("d02-ll", "LL", "21800601", "090000.5", 120),
    ],
    "The heart is enlarged. Mild pulmonary edema may be present. No pleural effusion.",
    "Cardiomegaly, possible edema.",
    {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"},
  ),
  (
    "10000764",
    "50000003",
    "train",
    [("d03-pa", "PA", "21810101", "101010", 90)],  # no lateral
    "Streaky opacity at the left base, likely atelectasis.",
    "Atelectasis.",
    {"Atelectasis": "1.0"},
  ),
  (
    "10000764",
    "50000004",
    "train",
    [("d04-pa", "PA", "21810202", "101010", 90), ("d04-lat", "LATERAL", "21810202", "101010", 90)],
    "",
    "No acute cardiopulmonary process.",
    {"No Finding": "1.0"},
  ),  # empty FINDINGS
  # The first PA (by date) is a truncated JPEG: the second is used.
  (
    "11000011",
    "50000005",
    "train",
    [
      ("d05-pa1", "PA", "21820303", "080000", "truncated"),
      ("d05-pa2", "PA", "21820303", "080500", 170),
      ("d05-lat", "LATERAL", "21820303", "080500", 60),
    ],
    "The lungs are clear. The heart size is normal. Small left pleural effusion.",
    "Small left effusion.",
    {"Pleural Effusion": "1.0", "No Finding": ""},
  ),
  # The only PA is listed but absent.
  (
    "11000011",
    "50000006",
    "train",
    [
      ("d06-pa", "PA", "21820404", "080000", "absent"),
      ("d06-lat", "LATERAL", "21820404", "080000", 80),
    ],
    "No focal consolidation. The heart size is normal.",
    "Normal.",
    {"No Finding": "1.0"},
  ),
  # Not in the label CSV; two laterals at the same time: the smaller dicom_id wins.
  (
    "11000011",
    "50000007",
    "train",
    [
      ("d07-pa", "PA", "21820505", "080000", 100),
      ("d07-lat-b", "LATERAL", "21820505", "080000", 30),
      ("d07-lat-a", "LATERAL", "21820505", "080000", 220),
    ],
    "Right pleural effusion is present. The lungs are otherwise clear.",
    "Effusion.",
    None,
  ),
  (
    "12000022",
    "50000008",
    "validate",
    [
      ("d08-pa", "PA", "21830101", "111111", 100),
      ("d08-lat", "LATERAL", "21830101", "111111", 100),
    ],
    "The lungs are clear. Cardiomegaly is seen.",
    "Cardiomegaly.",
    {"Cardiomegaly": "1.0", "Support Devices": "-1.0"},
  ),
  (
    "12000022",
    "50000009",
    "validate",
    [("d09-ap", "AP", "21830202", "111111", 100)],  # AP only
    "Portable view. Lines and tubes are unchanged.",
    "Stable.",
    {"Support Devices": "1.0"},
  ),
  (
    "13000033",
    "50000010",
    "test",
    [
      ("d10-pa", "PA", "21840101", "121212", 100),
      ("d10-lat", "LATERAL", "21840101", "121212", 100),
    ],
    "Pneumoperitoneum is seen. The lungs are clear.",
    "Free air.",
    {"No Finding": "0.0"},
  ),
  (
    "13000033",
    "50000011",
    "test",  # report absent
    [
      ("d11-pa", "PA", "21840202", "121212", 100),
      ("d11-lat", "LATERAL", "21840202", "121212", 100),
    ],
    None,
    None,
    {"Lung Opacity": "1.0"},
  ),
  (
    "14000044",
    "50000012",
    "test",  # more than T - 1 tokens
    [
      ("d12-pa", "PA", "21850101", "131313", 100),
      ("d12-lat", "LATERAL", "21850101", "131313", 100),
    ],
    "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax. "
    "No focal consolidation.",
    "Normal chest.",
    {},
  ),
  (
    "14000044",
    "50000013",
    "test",  # an AP image, no report: nothing usable
    [("d13-ap", "AP", "21850202", "131313", 100)],
    None,
    None,
    {},
  ),
]
STUDY = {s[1]: s for s in STUDIES}

REPORT_TEMPLATE = """\
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___M with cough and fever, cough, cough, cough, eval for pneumonia.

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  Radiograph from ___, cough.

 FINDINGS:
{findings}

 IMPRESSION:
 {impression}
"""


def _wrap(text: str, width: int = 40) -> str:
  """Breaks the findings over several indented lines, as in the real reports."""
  lines, line = [], ""
  for word in text.split():
    if len(line) + len(word) > width:
      lines.append(line)
      line = ""
    line += (" " if line else "") + word
  lines.append(line)
  return "\n".join(" " + l + "  " for l in lines if l)


def _report(study) -> str:
  return REPORT_TEMPLATE.format(findings=_wrap(study[4]), impression=study[5])


def _image(content) -> Image.Image:
  if content == "bands":  # width 300, height 240
    a = np.full((240, 300), 128, np.uint8)
    a[:, 30:150], a[:, 150:270] = 250, 5
  elif content == "tall":  # width 240, height 300
    a = np.full((300, 240), 128, np.uint8)
    a[30:150, :], a[150:270, :] = 250, 5
  else:
    a = np.full((240, 300), content, np.uint8)
  return Image.fromarray(a, mode="L")


def _write_csv_gz(path, header, rows):
  with gzip.open(path, "wt", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def write_fake_mimic(root, reports_as="tree", drop_files=(), drop_column=None, studies=STUDIES):
  """Writes the fake MIMIC-CXR-JPG manual dir of ``studies``; reports_as "tree", "zip" or None
  (no reports)."""
  os.makedirs(root)
  files = os.path.join(root, "files")
  metadata, split, labels = [], [], []
  report_files = {}
  for entry in studies:
    subject, study, split_name, images, findings, impression, label_values = entry
    study_dir = os.path.join(files, f"p{subject[:2]}", f"p{subject}", f"s{study}")
    os.makedirs(study_dir)
    for dicom, view, date, time, content in images:
      metadata.append(
        (
          dicom,
          subject,
          study,
          "CHEST (PA AND LAT)",
          view,
          240,
          300,
          date,
          time,
          "CHEST (PA AND LAT)",
          "postero-anterior",
          "Erect",
        )
      )
      split.append((dicom, study, subject, split_name))
      path = os.path.join(study_dir, f"{dicom}.jpg")
      if content == "absent":
        continue
      if content == "truncated":
        buffer = io.BytesIO()
        _image(150).save(buffer, format="JPEG", quality=95)
        data = buffer.getvalue()
        with open(path, "wb") as f:
          f.write(data[: int(len(data) * 0.4)])
      else:
        _image(content).save(path, format="JPEG", quality=95)
    if label_values is not None:
      labels.append((subject, study) + tuple(label_values.get(n, "") for n in features.LABELS))
    if findings is not None:
      report_files[f"files/p{subject[:2]}/p{subject}/s{study}.txt"] = _report(entry)
  header = METADATA_HEADER
  if drop_column:
    index = header.index(drop_column)
    header = header[:index] + header[index + 1 :]
    metadata = [r[:index] + r[index + 1 :] for r in metadata]
  _write_csv_gz(os.path.join(root, selection.METADATA_CSV), header, metadata)
  _write_csv_gz(os.path.join(root, selection.SPLIT_CSV), SPLIT_HEADER, split)
  _write_csv_gz(os.path.join(root, selection.CHEXPERT_CSV), LABEL_HEADER, labels)
  _write_csv_gz(os.path.join(root, selection.NEGBIO_CSV), LABEL_HEADER, labels)
  if reports_as == "tree":
    for name, report in report_files.items():
      with open(os.path.join(root, name), "w") as f:
        f.write(report)
  elif reports_as == "zip":
    with zipfile.ZipFile(os.path.join(root, selection.REPORTS_ZIP), "w") as z:
      for name, report in sorted(report_files.items()):
        z.writestr(name, report)
  for name in drop_files:
    path = os.path.join(root, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  return root


def tiny_config(name, **kwargs):
  return mcb.MimicCxrConfig(
    name=name,
    image_size=IMAGE_SIZE,
    text_length=TEXT_LENGTH,
    min_count=MIN_COUNT,
    num_workers=2,
    **kwargs,
  )


def build(manual_dir, data_dir, config):
  return prepare_from(mcb.Builder(config=config, data_dir=str(data_dir)), manual_dir)


examples = examples_by_study


def skip_rows(builder, split):
  with open(os.path.join(builder.data_dir, f"skip_report_{split}.csv")) as f:
    rows = list(csv.reader(f))
  assert tuple(rows[0]) == selection.SKIP_REPORT_COLUMNS
  return {tuple(r[2:]) for r in rows[1:]}  # (study_id, dicom_id, reason, outcome)


def expected_text(study_id, section="findings"):
  return reports.normalize_whitespace(STUDY[study_id][4]).lower()


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
  return write_fake_mimic(str(tmp_path_factory.mktemp("mimic") / "tree"))


@pytest.fixture(scope="module")
def paper(fake_tree, tmp_path_factory):
  builder = build(fake_tree, tmp_path_factory.mktemp("data_paper"), tiny_config("tiny_paper"))
  return builder, examples(builder)


@pytest.fixture(scope="module")
def all_studies(fake_tree, tmp_path_factory):
  builder = build(
    fake_tree, tmp_path_factory.mktemp("data_all"), tiny_config("tiny_all", selection="all_studies")
  )
  return builder, examples(builder)


# ----------------------------------------------------------------------------------------------
# Reports.


def test_sections_run_to_the_next_header():
  report = _report(STUDY["50000001"])
  sections = dict(reports.split_sections(report))
  assert list(sections) == [
    "EXAMINATION",
    "INDICATION",
    "TECHNIQUE",
    "COMPARISON",
    "FINDINGS",
    "IMPRESSION",
  ]
  assert sections["FINDINGS"] == STUDY["50000001"][4]  # whitespace normalised, case kept
  assert reports.section_text(report) == (STUDY["50000001"][4].lower(), "findings")


def test_findings_on_the_header_line_and_impression_fallback():
  report = "FINAL REPORT\nFINDINGS: Lungs   clear.\n  NOTE: called.\nIMPRESSION:\n Normal."
  assert reports.section_text(report) == ("lungs clear.", "findings")
  empty = _report(STUDY["50000004"])
  assert reports.section_text(empty, "findings") == ("", "")
  assert reports.section_text(empty, "findings_or_impression") == (
    "no acute cardiopulmonary process.",
    "impression",
  )
  with pytest.raises(ValueError, match="'summary'"):
    reports.section_text(report, "summary")


# ----------------------------------------------------------------------------------------------
# The paper selection.


def test_paper_selects_pa_lateral_findings(paper):
  _, ex = paper
  assert sorted(ex["train"]) == ["50000001", "50000002", "50000005", "50000007"]
  assert sorted(ex["validation"]) == ["50000008"]
  assert sorted(ex["test"]) == ["50000010", "50000012"]
  for split in ex.values():
    for e in split.values():
      assert e["available"].tolist() == [True, True, True]
      assert e["frontal"].shape == e["lateral"].shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
      assert e["frontal"].dtype == np.uint8 and e["text"].shape == (TEXT_LENGTH,)


def test_candidate_order_and_fallback(paper):
  train = paper[1]["train"]
  # Earliest StudyTime first (d02-b), not the smallest dicom_id; its pixels are the dark ones.
  assert train["50000002"]["frontal_dicom_id"] == b"d02-b-pa"
  assert abs(int(train["50000002"]["frontal"].mean()) - 40) <= 3
  assert train["50000002"]["lateral_dicom_id"] == b"d02-ll"  # LL counts as lateral
  # A truncated first candidate: the next PA image is used.
  assert train["50000005"]["frontal_dicom_id"] == b"d05-pa2"
  assert abs(int(train["50000005"]["frontal"].mean()) - 170) <= 3
  # Same date and time: the smaller dicom_id.
  assert train["50000007"]["lateral_dicom_id"] == b"d07-lat-a"


def test_crop_and_resize_keep_the_pattern(paper):
  e = paper[1]["train"]["50000001"]
  frontal, lateral = e["frontal"][..., 0].astype(int), e["lateral"][..., 0].astype(int)
  # Centre crop of 300x240 is columns 30..269: bright left half, dark right half, no grey edge.
  assert frontal[:, :13].mean() > 235 and frontal[:, 19:].mean() < 20
  assert frontal[:, 0].min() > 225 and frontal[:, -1].max() < 30
  # The tall lateral is cropped vertically: bright top, dark bottom.
  assert lateral[:13].mean() > 235 and lateral[19:].mean() < 20
  assert lateral[0].min() > 225 and lateral[-1].max() < 30


def test_labels_and_finding(paper):
  ex = paper[1]
  labels = dict(zip(features.LABELS, ex["train"]["50000002"]["labels"].tolist()))
  assert labels["Cardiomegaly"] == 1.0 and labels["Edema"] == -1.0
  assert labels["Pleural Effusion"] == 0.0 and math.isnan(labels["Atelectasis"])
  assert ex["train"]["50000002"]["finding"] == 1
  assert ex["train"]["50000001"]["finding"] == 0  # only "No Finding" positive
  assert ex["validation"]["50000008"]["finding"] == 1
  assert ex["test"]["50000010"]["finding"] == 0  # "No Finding" 0, nothing positive
  assert np.isnan(ex["test"]["50000012"]["labels"]).all()  # an all-blank row
  # Not in the label CSV: all NaN, finding 0, listed as labels_missing.
  assert np.isnan(ex["train"]["50000007"]["labels"]).all()
  assert ex["train"]["50000007"]["finding"] == 0


def test_text_and_train_only_vocabulary(paper):
  builder, ex = paper
  words = builder.info.metadata["vocabulary"]
  # The train studies written: 50000006, selected by the CSVs and its report, is left out (its
  # only PA file is absent, so it is skipped), and so are its words.
  train_texts = [expected_text(s) for s in ("50000001", "50000002", "50000005", "50000007")]
  vocabulary = text_lib.Vocabulary.build(train_texts, min_count=MIN_COUNT)
  assert words == vocabulary.words
  assert "clear" in words and "heart" in words
  assert "cough" not in words  # INDICATION and COMPARISON are not FINDINGS
  assert "enlarged" not in words  # seen once: kept only if seen MORE than min_count times
  assert "cardiomegaly" not in words and "pneumoperitoneum" not in words  # not train
  for split in ex.values():
    for study_id, e in split.items():
      assert e["report"].decode() == expected_text(study_id)
      np.testing.assert_array_equal(
        e["text"], vocabulary.encode(expected_text(study_id), TEXT_LENGTH)
      )
  test_ids = ex["test"]["50000010"]["text"].tolist()
  assert test_ids[0] == text_lib.EXC_ID  # "pneumoperitoneum"
  # "pneumoperitoneum" and "seen" never occur in train reports.
  assert vocabulary.decode(test_ids) == "<exc> is <exc> . the lungs are clear ."
  long_ids = ex["test"]["50000012"]["text"].tolist()  # 20 tokens: 15 kept, then <eos>
  assert len(text_lib.tokenize(expected_text("50000012"))) > TEXT_LENGTH
  assert long_ids[-1] == text_lib.EOS_ID and text_lib.PAD_ID not in long_ids
  short_ids = ex["train"]["50000001"]["text"].tolist()
  assert short_ids[short_ids.index(text_lib.EOS_ID) + 1 :] == [text_lib.PAD_ID] * (
    TEXT_LENGTH - short_ids.index(text_lib.EOS_ID) - 1
  )


# A train study whose only PA image is a truncated JPEG (so the paper selection skips it once
# its images load), and whose FINDINGS alone hold "bronchiectasis" (twice: min_count is 1).
def _bronchiectasis_study(pa_content):
  return (
    "15000055",
    "50000014",
    "train",
    [
      ("d14-pa", "PA", "21860101", "141414", pa_content),
      ("d14-lat", "LATERAL", "21860101", "141414", 100),
    ],
    "Bronchiectasis at both bases. The bronchiectasis is unchanged.",
    "Bronchiectasis.",
    {"No Finding": "0.0"},
  )


@pytest.mark.parametrize("pa_content", ["truncated", 150])
def test_a_study_skipped_for_its_image_adds_no_words(pa_content, paper, tmp_path):
  manual_dir = write_fake_mimic(
    str(tmp_path / "m"), studies=STUDIES + [_bronchiectasis_study(pa_content)]
  )
  builder = build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))
  words = builder.info.metadata["vocabulary"]
  broken = pa_content == "truncated"
  assert ("50000014" in examples(builder)["train"]) is not broken
  rows = skip_rows(builder, "train")
  assert (("50000014", "d14-pa", "image_unreadable", "study_skipped") in rows) is broken
  assert ("bronchiectasis" in words) is not broken
  if broken:  # the skipped study changes nothing: the vocabulary of the tree without it
    assert words == paper[0].info.metadata["vocabulary"]
  else:
    train_texts = [expected_text(s) for s in ("50000001", "50000002", "50000005", "50000007")]
    train_texts.append(reports.normalize_whitespace(_bronchiectasis_study(150)[4]).lower())
    assert words == text_lib.Vocabulary.build(train_texts, min_count=MIN_COUNT).words


def test_paper_skip_report(paper):
  builder, _ = paper
  assert skip_rows(builder, "train") == {
    ("50000003", "", "no_lateral", "study_skipped"),
    ("50000004", "", "section_empty", "study_skipped"),
    ("50000005", "d05-pa1", "image_unreadable", "other_image_used"),
    ("50000006", "d06-pa", "image_missing", "study_skipped"),
    ("50000007", "", "labels_missing", "kept"),
  }
  assert skip_rows(builder, "validation") == {("50000009", "", "no_frontal", "study_skipped")}
  assert skip_rows(builder, "test") == {
    ("50000011", "", "report_missing", "study_skipped"),
    ("50000013", "", "no_frontal", "study_skipped"),
  }
  skipped = builder.info.metadata["skipped"]
  assert skipped["train"] == {
    "listed": 7,
    "written": 4,
    "skipped_studies": 3,
    "counts": {
      "image_missing/study_skipped": 1,
      "image_unreadable/other_image_used": 1,
      "labels_missing/kept": 1,
      "no_lateral/study_skipped": 1,
      "section_empty/study_skipped": 1,
    },
  }
  assert skipped["test"]["written"] == 2 and skipped["test"]["skipped_studies"] == 2


def test_metadata_comes_back_from_the_data_dir(paper):
  builder, _ = paper
  reloaded = tfds.builder_from_directory(builder.data_dir)
  assert reloaded.info.metadata["vocabulary"] == builder.info.metadata["vocabulary"]
  assert reloaded.info.metadata["config"]["text_length"] == TEXT_LENGTH
  assert reloaded.info.splits["train"].num_examples == 4


# ----------------------------------------------------------------------------------------------
# The all_studies selection.


def test_all_studies_available_flags(all_studies):
  _, ex = all_studies
  available = {s: e["available"].tolist() for split in ex.values() for s, e in split.items()}
  assert available == {
    "50000001": [True, True, True],
    "50000002": [True, True, True],
    "50000003": [True, False, True],  # no lateral
    "50000004": [True, True, False],  # empty FINDINGS
    "50000005": [True, True, True],
    "50000006": [False, True, True],  # the PA file is absent
    "50000007": [True, True, True],
    "50000008": [True, True, True],
    "50000009": [False, False, True],  # AP only: text only
    "50000010": [True, True, True],
    "50000011": [True, True, False],  # report absent
    "50000012": [True, True, True],
  }
  assert sorted(ex["validation"]) == ["50000008", "50000009"]
  e = ex["train"]["50000006"]
  assert not e["frontal"].any() and e["frontal_dicom_id"] == b""
  e = ex["train"]["50000004"]
  assert e["text"].tolist() == [text_lib.PAD_ID] * TEXT_LENGTH and e["report"] == b""


def test_all_studies_vocabulary_and_skip_report(all_studies):
  builder, _ = all_studies
  train_texts = [
    expected_text(s)
    for s in ("50000001", "50000002", "50000003", "50000005", "50000006", "50000007")
  ]
  assert (
    builder.info.metadata["vocabulary"]
    == text_lib.Vocabulary.build(train_texts, min_count=MIN_COUNT).words
  )
  assert skip_rows(builder, "train") == {
    ("50000005", "d05-pa1", "image_unreadable", "other_image_used"),
    ("50000006", "d06-pa", "image_missing", "modality_unavailable"),
    ("50000007", "", "labels_missing", "kept"),
  }
  assert skip_rows(builder, "validation") == set()
  assert skip_rows(builder, "test") == {
    ("50000011", "", "report_missing", "modality_unavailable"),
    ("50000013", "", "no_modality", "study_skipped"),
  }


def test_impression_fallback_and_negbio(fake_tree, tmp_path):
  config = tiny_config(
    "tiny_all_impression",
    selection="all_studies",
    section="findings_or_impression",
    label_source="negbio",
  )
  builder = build(fake_tree, tmp_path, config)
  e = examples(builder)["train"]["50000004"]
  assert e["available"].tolist() == [True, True, True]
  assert e["report"] == b"no acute cardiopulmonary process."
  assert builder.info.metadata["config"]["label_source"] == "negbio"


# ----------------------------------------------------------------------------------------------
# Reports from the zip, bad manual dirs.


def test_reports_zip_gives_the_same_dataset(paper, tmp_path_factory):
  manual_dir = write_fake_mimic(str(tmp_path_factory.mktemp("mimic_zip") / "m"), "zip")
  builder = build(manual_dir, tmp_path_factory.mktemp("data_zip"), tiny_config("tiny_paper"))
  zipped, tree = examples(builder), paper[1]
  assert builder.info.metadata["vocabulary"] == paper[0].info.metadata["vocabulary"]
  for split in tree:
    assert sorted(zipped[split]) == sorted(tree[split])
    for study_id, e in tree[split].items():
      for key in ("text", "report", "frontal", "lateral", "available"):
        np.testing.assert_array_equal(zipped[split][study_id][key], e[key])


@pytest.mark.parametrize(
  "missing", [selection.SPLIT_CSV, selection.METADATA_CSV, selection.CHEXPERT_CSV, "files"]
)
def test_missing_file_is_named(missing, tmp_path):
  manual_dir = write_fake_mimic(str(tmp_path / "m"), drop_files=(missing,))
  with pytest.raises(FileNotFoundError, match=rf"{missing}(.|\n)*physionet\.org"):
    build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))


def test_missing_reports_are_named(tmp_path):
  manual_dir = write_fake_mimic(str(tmp_path / "m"), reports_as=None)
  with pytest.raises(FileNotFoundError, match="mimic-cxr-reports.zip"):
    build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))


def test_missing_column_is_named(tmp_path):
  manual_dir = write_fake_mimic(str(tmp_path / "m"), drop_column="ViewPosition")
  with pytest.raises(ValueError, match=r"metadata\.csv\.gz: missing column 'ViewPosition'"):
    build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))


def test_truncated_csv_is_named(tmp_path):
  manual_dir = write_fake_mimic(str(tmp_path / "m"))
  path = os.path.join(manual_dir, selection.SPLIT_CSV)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"split\.csv\.gz is not a readable CSV"):
    build(manual_dir, tmp_path / "data", tiny_config("tiny_paper"))


def test_missing_manual_dir_shows_the_instructions(tmp_path):
  with pytest.raises(AssertionError, match=r"(?s)does not exist.*MIMIC-CXR-JPG 2\.0\.0"):
    build(tmp_path / "nowhere", tmp_path / "data", tiny_config("tiny_paper"))


def test_the_train_split_must_be_written_first():
  # Its written reports give the vocabulary that the other splits' word ids need.
  builder = types.SimpleNamespace(
    info=types.SimpleNamespace(metadata={}), builder_config=tiny_config("x"), data_dir="/none"
  )
  writer = study_writer.SplitWriter(builder, "mimic_cxr", selection.SKIP_REPORT_COLUMNS, dict)
  with pytest.raises(RuntimeError, match="'train' split must be written before 'validation'"):
    next(writer.examples("validation", [], [], listed=0, num_workers=1))


def test_bad_config_values_are_named():
  with pytest.raises(ValueError, match="'both'"):
    mcb.MimicCxrConfig(name="x", selection="both")
  with pytest.raises(ValueError, match="'radgraph'"):
    mcb.MimicCxrConfig(name="x", label_source="radgraph")


# ----------------------------------------------------------------------------------------------
# The documented one-line preparation command.


@pytest.mark.slow  # the build command in a subprocess
def test_documented_command_builds_the_paper_config(fake_tree, tmp_path):
  """`python -m input_pipeline.mimic_cxr --config=paper --manual_dir=... --data_dir=...`."""
  stderr, builder = run_prepare_command("mimic_cxr", fake_tree, tmp_path / "tfds")
  assert "build done: wrote train 4 of 7, validation 1 of 2, test 2 of 4" in stderr
  assert builder.info.splits["train"].num_examples == 4
  assert builder.info.metadata["vocabulary"][:3] == list(text_lib.SPECIAL_TOKENS)
  assert len(builder.info.metadata["vocabulary"]) > 3
  e = next(iter(tfds.as_numpy(builder.as_dataset(split="validation"))))
  assert e["frontal"].shape == (128, 128, 1) and e["text"].shape == (128,)
  assert os.path.exists(os.path.join(builder.data_dir, "skip_report_train.csv"))


def test_a_trained_model_reads_the_source_files_as_the_builder_stored_them(paper, fake_tree):
  """mopoe_jax.inference on the same JPEGs and report file gives the builder's arrays."""
  from mopoe_jax import inference  # pylint: disable=g-import-not-at-top

  builder, ex = paper
  vocabulary = text_lib.Vocabulary(builder.info.metadata["vocabulary"])
  for split, study_id in (("train", "50000001"), ("test", "50000010")):
    subject, _, _, images, *_ = STUDY[study_id]
    folder = os.path.join(fake_tree, "files", f"p{subject[:2]}", f"p{subject}")
    stored = ex[split][study_id]
    views = {view: dicom for dicom, view, *_ in images}
    for modality, view in (("frontal", "PA"), ("lateral", "LATERAL")):
      path = os.path.join(folder, f"s{study_id}", f"{views[view]}.jpg")
      np.testing.assert_array_equal(inference.read_image(path, IMAGE_SIZE), stored[modality])
    report = inference.read_report(os.path.join(folder, f"s{study_id}.txt"))
    assert report == stored["report"].decode()
    np.testing.assert_array_equal(vocabulary.encode(report, TEXT_LENGTH), stored["text"])
