"""Public dataset layouts -> records and torch Datasets."""

from pulmo.datasets.lung_masks import LungSegDataset, covid_chestxray_mask_records, image_mask_records
from pulmo.datasets.splits import patient_fold, split_by_patient

__all__ = ["LungSegDataset", "covid_chestxray_mask_records", "image_mask_records", "patient_fold", "split_by_patient"]

from pulmo.datasets.covid_ct import LesionSliceDataset, covid_semiseg_records, ct_volume_records

__all__ += ["LesionSliceDataset", "covid_semiseg_records", "ct_volume_records"]
