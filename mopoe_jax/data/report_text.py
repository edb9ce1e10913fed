"""Sections of MIMIC-CXR free-text reports.

A MIMIC-CXR report is plain text with upper-case section headers, each followed by a colon:

                                 FINAL REPORT
   EXAMINATION:  CHEST (PA AND LAT)
   INDICATION:  ___F with new onset ascites
   COMPARISON:  None.
   FINDINGS:
   There is no focal consolidation, pleural effusion or pneumothorax.
   IMPRESSION:
   No acute cardiopulmonary process.

A header is an upper-case name (letters, digits, spaces and ``,&/()'-``) at the start of a line,
then a colon; a section runs from its header to the next header (or the end of the report).
Lines without such a header before the first one (``FINAL REPORT``, ``WET READ ...``) belong to
no section. Whitespace inside a section is collapsed to single spaces.
"""

from __future__ import annotations

import re
from xml.etree import ElementTree

# Section choices of the builder configs.
FINDINGS = "findings"
FINDINGS_OR_IMPRESSION = "findings_or_impression"
SECTIONS = (FINDINGS, FINDINGS_OR_IMPRESSION)

# Header names (after whitespace normalisation) that count as each section.
FINDINGS_HEADERS = ("FINDINGS", "FINDING")
IMPRESSION_HEADERS = ("IMPRESSION", "IMPRESSIONS")

_HEADER_RE = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ,&/()'\-]*[A-Z0-9)])[ \t]*:", re.MULTILINE)
_SPACE_RE = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
  """Collapses every run of whitespace (newlines included) into one space; strips the ends."""
  return _SPACE_RE.sub(" ", text).strip()


def split_sections(report: str) -> list[tuple[str, str]]:
  """The (header, body) pairs of ``report`` in order of appearance.

  Headers are whitespace-normalised upper-case names without the colon (``"FINDINGS"``);
  bodies are whitespace-normalised and keep their case. Text before the first header is dropped.
  """
  matches = list(_HEADER_RE.finditer(report))
  sections = []
  for i, match in enumerate(matches):
    end = matches[i + 1].start() if i + 1 < len(matches) else len(report)
    header = normalize_whitespace(match.group(1))
    sections.append((header, normalize_whitespace(report[match.end() : end])))
  return sections


def find_section(sections: list[tuple[str, str]], headers: tuple[str, ...]) -> str:
  """The body of the first non-empty (header, body) pair whose header is in ``headers``; ""
  if none."""
  for header, body in sections:
    if header in headers and body:
      return body
  return ""


def choose_section(sections: list[tuple[str, str]], section: str = FINDINGS) -> tuple[str, str]:
  """The lower-cased text of the configured section and which section it came from.

  Args:
    sections: (upper-case header, whitespace-normalised body) pairs in order, as
      `split_sections` returns them (or as a builder reads them from structured reports).
    section: ``"findings"`` (the FINDINGS section only) or ``"findings_or_impression"``
      (FINDINGS, or IMPRESSION where FINDINGS is absent or empty).

  Returns:
    (text, source): ``text`` lower-cased, ``source`` one of ``"findings"``, ``"impression"`` or
    ``""`` (then ``text`` is "" too).
  """
  if section not in SECTIONS:
    raise ValueError(f"Unknown report section {section!r}; expected one of {SECTIONS}.")
  text = find_section(sections, FINDINGS_HEADERS)
  if text:
    return text.lower(), "findings"
  if section == FINDINGS_OR_IMPRESSION:
    text = find_section(sections, IMPRESSION_HEADERS)
    if text:
      return text.lower(), "impression"
  return "", ""


def section_text(report: str, section: str = FINDINGS) -> tuple[str, str]:
  """`choose_section` of a plain-text report's sections (`split_sections`)."""
  return choose_section(split_sections(report), section)


def xml_sections(root: ElementTree.Element) -> list[tuple[str, str]]:
  """(upper-case label, whitespace-normalised text) of every ``<AbstractText Label="...">`` of
  an Open-i (Indiana University collection) XML report, in order; an empty element gives ""."""
  return [
    (normalize_whitespace(e.get("Label", "")).upper(), normalize_whitespace("".join(e.itertext())))
    for e in root.iter("AbstractText")
  ]


def parse_xml(xml: bytes | str) -> ElementTree.Element:
  """The root element of an XML report; ValueError where it is not well-formed XML."""
  try:
    return ElementTree.fromstring(xml)
  except ElementTree.ParseError as e:
    raise ValueError(f"not well-formed XML ({e})") from e


def user_report_text(report: str) -> str:
  """The text a trained model reads of a user's report file, lower-cased.

  A report with section headers gives its FINDINGS section (IMPRESSION where FINDINGS is
  absent or empty), as the dataset builders read MIMIC-CXR reports, and so does an Open-i XML
  report (its ``AbstractText`` sections, as the iu_xray builder reads them); a report without
  any section header is taken whole (whitespace-normalised). "" when none has words.

  Raises:
    ValueError: the report starts like XML but is not well-formed.
  """
  if report.lstrip().startswith("<"):  # an Open-i XML report (report.xml)
    return choose_section(xml_sections(parse_xml(report)), FINDINGS_OR_IMPRESSION)[0]
  if split_sections(report):
    return section_text(report, FINDINGS_OR_IMPRESSION)[0]
  return normalize_whitespace(report).lower()
