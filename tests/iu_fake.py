"""A small fake Indiana University (Open-i) collection with the real archive layout and XML schema.

Structure only: the element names, attributes and file names of NLMCXR_reports.tgz
(ecgen-radiology/N.xml), NLMCXR_png.tgz (CXR<N>_IM-<series>-<image>.png) and the Kaggle copy's
indiana_projections.csv; every text is made up here (the collection's reports are licensed
CC BY-NC-ND and are not copied).
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import tarfile
from xml.sax import saxutils

import numpy as np
from PIL import Image

# (id, images [(file stem, projection or None (not in the table), content)], findings (None: no
#  FINDINGS element), impression, MeSH majors (None: no <MeSH> element)); content: an int is a
# uniform grey image of that value, "corrupt" a PNG cut after a third of its bytes, "absent" no
# file at all.
STUDIES = [
  (
    "1",
    [("CXR1_1_IM-0001-3001", "Frontal", 200), ("CXR1_1_IM-0001-4001", "Lateral", 60)],
    "Heart size normal. Lungs are clear.",
    "No acute disease.",
    ["normal"],
  ),
  # Two frontal images: the first by name does not decode, the second is used.
  (
    "2",
    [
      ("CXR2_IM-0652-1001", "Frontal", "corrupt"),
      ("CXR2_IM-0652-1002", "Frontal", 180),
      ("CXR2_IM-0652-2001", "Lateral", 70),
    ],
    "The heart is enlarged. Streaky basilar opacity.",
    "Cardiomegaly.",
    ["Cardiomegaly/mild", "Pulmonary Atelectasis/base/left", "Calcified Granuloma/lung"],
  ),
  (
    "3",
    [("CXR3_IM-1384-1001", "Frontal", 150)],  # no lateral
    "Lungs are clear.",
    "Normal.",
    ["normal"],
  ),
  (
    "4",
    [("CXR4_IM-2050-1001", "Frontal", 150), ("CXR4_IM-2050-2001", "Lateral", 90)],
    None,
    "No active disease.",
    ["normal"],
  ),  # no FINDINGS element
  (
    "5",
    [("CXR5_IM-2117-1003002", "Frontal", 120), ("CXR5_IM-2117-1004003", "Lateral", 40)],
    "",
    "Old granuloma.",
    ["Calcified Granuloma/lung/upper lobe/right"],
  ),  # empty FINDINGS
  (
    "6",
    [("CXR6_IM-2192-1001", "Frontal", 110), ("CXR6_IM-2192-2001", "Lateral", 30)],
    "Small right effusion. A catheter is seen.",
    "Effusion.",
    None,
  ),  # no <MeSH>
  # A third image the projections table does not list: not used.
  (
    "7",
    [
      ("CXR7_IM-2263-1001", "Frontal", 100),
      ("CXR7_IM-2263-2001", "Lateral", 20),
      ("CXR7_IM-2263-3001", None, 255),
    ],
    "Right pleural effusion. A line is in place.",
    "Effusion.",
    ["Pleural Effusion/right/small", "Catheters, Indwelling"],
  ),
  ("8", "truncated", None, None, None),  # the XML does not parse
  (
    "9",
    [("CXR9_IM-2407-1001", "Frontal", "absent"), ("CXR9_IM-2407-2001", "Lateral", 80)],
    "Lungs are clear.",
    "Normal.",
    ["normal"],
  ),  # the frontal PNG is missing
  ("10", [], "Lungs are clear.", "Normal.", ["No Indexing"]),  # no parentImage
]

# Words of the made-up bulk reports, by finding.
_BULK_FINDINGS = {
  "normal": ("heart size is normal", "lungs are clear", "no effusion"),
  "Cardiomegaly/moderate": ("heart is enlarged", "cardiac silhouette is large"),
  "Opacity/lung/base/left": ("opacity at the left base", "hazy left basilar density"),
  "Pleural Effusion/right": ("right pleural effusion", "blunted right angle"),
}

XML_TEMPLATE = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{id}"/>
   <pmcId id="{id}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{id}"/>
   <licenseType>open-access</licenseType>
   <licenseURL>http://creativecommons.org/licenses/by-nc-nd/4.0/</licenseURL>
   <ccLicense>byncnd</ccLicense>
   <articleURL/>
   <articleDate>2013-08-01</articleDate>
   <articleType>XR</articleType>
   <publisher>Indiana University</publisher>
   <title>Indiana University Chest X-ray Collection</title>
   <note>The data are drawn from multiple hospital systems.</note>
   <specialty>pulmonary diseases</specialty>
   <subset>CXR</subset>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Journal>
            <JournalIssue>
               <PubDate>
                  <Year>2013</Year>
                  <Month>08</Month>
                  <Day>01</Day>
               </PubDate>
            </JournalIssue>
         </Journal>
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">Made-up indication.</AbstractText>
{findings}            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
         <Affiliation>Indiana University School of Medicine</Affiliation>
         <Language>eng</Language>
         <PublicationTypeList>
            <PublicationType>Radiology Report</PublicationType>
         </PublicationTypeList>
      </Article>
      <EVersion>2013-08-01</EVersion>
   </MedlineCitation>
{mesh}{images}</eCitation>
"""

IMAGE_TEMPLATE = """   <parentImage id="{stem}">
      <figureId>F{n}</figureId>
      <caption>Xray Chest PA and Lateral</caption>
      <panel type="single">
         <url>/hadoop/storage/radiology/extract/{stem}.jpg</url>
         <imgModality>7</imgModality>
         <region type="nonConvex">
            <label>Panel</label>
         </region>
      </panel>
   </parentImage>
"""


def report_xml(study_id, images, findings, impression, majors) -> str:
  esc = saxutils.escape
  if findings is None:
    findings_xml = ""
  elif not findings:  # the real files write an empty section as a self-closing element
    findings_xml = '            <AbstractText Label="FINDINGS"/>\n'
  else:
    findings_xml = f'            <AbstractText Label="FINDINGS">{esc(findings)}</AbstractText>\n'

  mesh = (
    ""
    if majors is None
    else "   <MeSH>\n"
    + "".join(f"      <major>{esc(m)}</major>\n" for m in majors)
    + "      <automatic>Made-up automatic term</automatic>\n   </MeSH>\n"
  )
  image_xml = "".join(
    IMAGE_TEMPLATE.format(stem=stem, n=n + 1) for n, (stem, _, _) in enumerate(images)
  )
  return XML_TEMPLATE.format(
    id=study_id, findings=findings_xml, impression=esc(impression), mesh=mesh, images=image_xml
  )


def png_bytes(value: int, shape=(300, 240)) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.full(shape, value, np.uint8), "L").save(buffer, format="PNG")
  return buffer.getvalue()


def bulk_studies(count: int, seed: int = 0):
  """``count`` made-up complete studies (ids from 100) whose texts and image brightness follow
  their finding, for a run that trains and evaluates."""
  rng = random.Random(seed)
  studies = []
  for i in range(count):
    study_id = str(100 + i)
    kind = 0 if i % 2 == 0 else 1 + (i // 2) % (len(_BULK_FINDINGS) - 1)  # half normal
    major = list(_BULK_FINDINGS)[kind]
    words = ". ".join(rng.sample(_BULK_FINDINGS[major], 2)) + "."
    value = 60 + 40 * kind + rng.randrange(20)
    studies.append(
      (
        study_id,
        [
          (f"CXR{study_id}_IM-{5000 + i:04d}-1001", "Frontal", value),
          (f"CXR{study_id}_IM-{5000 + i:04d}-2001", "Lateral", 255 - value),
        ],
        words,
        "Made-up impression.",
        [major],
      )
    )
  return studies


def write_fake_iu(
  root: str,
  studies=STUDIES,
  reports_as: str = "tgz",
  images_as: str = "tgz",
  projections: bool = True,
  kaggle_names: bool = True,
) -> str:
  """Writes the manual dir; returns ``root``.

  reports_as / images_as: "tgz" (the archives as downloaded) or "folder" (unpacked: the reports
  in ecgen-radiology/, the PNGs in NLMCXR_png/). kaggle_names: the projections table names the
  files as the Kaggle copy does (``<N>_IM-....dcm.png``), else as the PNG archive.
  """
  os.makedirs(root, exist_ok=True)
  xml_files, png_files, table = {}, {}, []
  for study_id, images, findings, impression, majors in studies:
    name = f"ecgen-radiology/{study_id}.xml"
    if images == "truncated":
      full = report_xml(study_id, [], "Made up.", "Made up.", ["normal"])
      xml_files[name] = full[: len(full) // 2]
      continue
    xml_files[name] = report_xml(study_id, images, findings, impression, majors)
    for stem, projection, content in images:
      if content == "absent":
        pass
      elif content == "corrupt":
        data = png_bytes(90)
        png_files[f"{stem}.png"] = data[: len(data) // 3]
      else:
        png_files[f"{stem}.png"] = png_bytes(content)
      if projection is not None:
        # The Kaggle copy drops "CXR", and report 1's repeated number ("CXR1_1_IM-...").
        kaggle = re.sub(r"^CXR(\d+)_(\1_)?", r"\1_", stem) + ".dcm.png"
        table_name = kaggle if kaggle_names else stem + ".png"
        table.append((study_id, table_name, projection))

  def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  if reports_as == "tgz":
    with tarfile.open(os.path.join(root, "NLMCXR_reports.tgz"), "w:gz") as tar:
      for name, xml in xml_files.items():
        add(tar, name, xml.encode())
  else:
    for name, xml in xml_files.items():
      os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
      with open(os.path.join(root, name), "w") as f:
        f.write(xml)
  if images_as == "tgz":
    with tarfile.open(os.path.join(root, "NLMCXR_png.tgz"), "w:gz") as tar:
      for name, data in png_files.items():
        add(tar, name, data)
  else:
    os.makedirs(os.path.join(root, "NLMCXR_png"), exist_ok=True)
    for name, data in png_files.items():
      with open(os.path.join(root, "NLMCXR_png", name), "wb") as f:
        f.write(data)
  if projections:
    with open(os.path.join(root, "indiana_projections.csv"), "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(("uid", "filename", "projection"))
      writer.writerows(table)
  return root
