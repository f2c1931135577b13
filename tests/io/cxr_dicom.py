"""Test helper: a real chest radiograph (PNG from ../shared/data/cxr) as a standard DICOM CR or DX image (pydicom).

The objects carry the modules their IOD requires (PS3.3 A.2 CR Image, A.26 Digital X-Ray Image *For
Presentation*): Patient, General Study, General Series, CR Series / DX Series, General Equipment, General
Image, Image Pixel, CR Image / DX Anatomy Imaged + DX Image + DX Detector, VOI LUT, Acquisition Context and
SOP Common, so that ``dciodvfy`` finds no error in them and pulmo's SEG / SR get real source attributes.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _ds(values) -> list[str]:
    """Decimal strings of at most 16 characters (PS3.5 6.2, VR DS)."""
    return [f"{float(v):.10g}" for v in values]


def write_cxr_dicom(png: Path, path: Path, kind: str = "CR", pixel_spacing: tuple[float, float] | None = None,
                    patient_id: str = "PULMO-TEST-CXR", study_uid: str | None = None) -> Path:
    """Write the greyscale PNG ``png`` as a frontal (PA) chest CR or DX *For Presentation* image.

    Args:
        png: an 8-bit greyscale (or grey RGB) chest X-ray PNG.
        path: the DICOM file to write.
        kind: ``"CR"`` (Computed Radiography Image Storage) or ``"DX"`` (Digital X-Ray Image Storage - For
            Presentation, which needs ``pixel_spacing``: ImagerPixelSpacing is Type 1 there).
        pixel_spacing: ``(row, column)`` mm at the detector, when known.
        patient_id: Patient ID.
        study_uid: Study Instance UID (new when ``None``).

    Returns:
        ``path``.
    """
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
    if kind == "DX" and pixel_spacing is None:
        raise ValueError("a DX image needs pixel_spacing (ImagerPixelSpacing is Type 1 in the DX Detector module)")
    sop_class = CR_STORAGE if kind == "CR" else DX_PRESENTATION_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = _dt.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = ds.ContentDate = ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    # Patient and General Study (PS3.3 C.7.1.1, C.7.2.1)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^CXR", patient_id, "", "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.StudyDescription = "Chest X-ray (pulmo test)"
    # General Series, CR / DX Series (C.7.3.1, C.8.1.1, C.8.11.1)
    ds.Modality = kind
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SeriesDescription = f"Chest PA ({png.name})"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]  # rows towards the patient's left, columns towards the feet: a PA view
    ds.Manufacturer = "pulmo test helper"
    # Image Pixel (C.7.6.3)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.WindowCenter, ds.WindowWidth = 127.5, 256.0
    if kind == "CR":
        if pixel_spacing is not None:
            ds.ImagerPixelSpacing = _ds(pixel_spacing)
    else:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Thorax")])
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.ImagerPixelSpacing = _ds(pixel_spacing)
        ds.DetectorType = "SCINTILLATOR"
        ds.AcquisitionContextSequence = Sequence([])
        ds.PositionerType = ""  # DX Positioning (C.8.11.5): Type 2, unknown
        ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior")])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
