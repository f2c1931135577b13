"""Coded concepts of pulmo's DICOM SEG and SR objects (PS3.16 coding schemes).

Library choice: ``highdicom.sr.CodedConcept`` (highdicom builds and checks the Code Sequence items); the
DICOM-defined concepts come from pydicom's code dictionary (``pydicom.sr.codedict.codes``), which is
generated from PS3.16, so their values and meanings are the standard's.

* SNOMED CT is designated ``SCT`` (PS3.16 Section 8; the old ``SRT`` designator is retired).
* Concepts with no standard code (the share of lung that is infected, the in/out-of-scope decision of the
  classifier, a detector's score) use pulmo's private coding scheme ``99PULMO`` (PS3.16 Section 8.2: a
  private designator starts with ``99``); :data:`PRIVATE_SCHEME` describes it for the Coding Scheme
  Identification Sequence (PS3.3 C.12.1.1.8) of each object that uses it.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

#: pulmo's private coding scheme designator (PS3.16 Section 8.2).
PRIVATE_SCHEME = "99PULMO"
#: Name of the private scheme, for the Coding Scheme Identification Sequence.
PRIVATE_SCHEME_NAME = "pulmo private codes"

# -- segmented property categories and types (CID 7150 / CID 7151 / CID 7159) ----------------------------
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # SCT 91723000
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
LUNG = codes.SCT.Lung  # SCT 39607008
NODULE = codes.SCT.Nodule  # SCT 27925004
LESION = codes.SCT.Lesion  # SCT 52988006
CONSOLIDATION = CodedConcept("95436008", "SCT", "Lung consolidation")
#: No SNOMED CT concept for ground-glass opacity is in PS3.16's code lists; DICOM's own (CID 6102) is used.
GROUND_GLASS_OPACITY = codes.DCM.GroundGlassOpacity  # DCM 112120

# -- measurements and their units (UCUM) --------------------------------------------------------------------
VOLUME = codes.SCT.Volume  # SCT 118565006
DIAMETER = codes.SCT.Diameter  # SCT 81827009
AREA = codes.SCT.Area  # SCT 42798000
PROBABILITY = codes.DCM.Probability  # DCM 122157
MILLIMETER = codes.UCUM.Millimeter
CUBIC_MILLIMETER = codes.UCUM.CubicMillimeter
MILLILITER = CodedConcept("ml", "UCUM", "milliliter")
SQUARE_CENTIMETER = CodedConcept("cm2", "UCUM", "square centimeter")
PERCENT = codes.UCUM.Percent
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1": probabilities and scores in [0, 1]
YES, NO = codes.SCT.Yes, codes.SCT.No

PERCENT_OF_LUNG = CodedConcept("percent-of-lung", PRIVATE_SCHEME, "Percent of lung volume")
IN_SCOPE = CodedConcept("in-scope", PRIVATE_SCHEME, "Within the classifier's classes")
OUT_OF_SCOPE_SCORE = CodedConcept("out-of-scope-score", PRIVATE_SCHEME, "Out-of-scope score")
DETECTION_SCORE = CodedConcept("detection-score", PRIVATE_SCHEME, "Detector score")

# -- procedures (CID 100-like SNOMED CT procedure concepts) -------------------------------------------------
CT_CHEST = CodedConcept("169069000", "SCT", "Computed tomography of chest")
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")

#: Classification labels of ``cxr-classify`` -> finding concepts.
CLASSIFICATION_FINDINGS = {
    "normal": codes.SCT.Normal,  # SCT 17621005
    "bacterial_pneumonia": CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
    "viral_pneumonia": CodedConcept("75570004", "SCT", "Viral pneumonia"),
    "covid19": CodedConcept("840539006", "SCT", "Disease caused by SARS-CoV-2"),
    "other_finding": codes.SCT.Abnormal,  # SCT 263654008: a finding outside the four classes
}

#: Detection labels (TBX11K) -> finding concepts.
DETECTION_FINDINGS = {
    "ActiveTuberculosis": CodedConcept("154283005", "SCT", "Pulmonary tuberculosis"),
    "ObsoletePulmonaryTuberculosis": CodedConcept("11999007", "SCT", "Inactive tuberculosis"),
    "PulmonaryTuberculosis": CodedConcept("154283005", "SCT", "Pulmonary tuberculosis"),
}


def finding_code(label: str, table: dict[str, CodedConcept]) -> CodedConcept:
    """The concept of a model label: from ``table``, else a private ``99PULMO`` code named after the label
    (code value at most 16 characters, PS3.5 SH)."""
    if label in table:
        return table[label]
    return CodedConcept(label[:16], PRIVATE_SCHEME, label.replace("_", " ")[:64])


