"""`label_diseases`: the first labelling step for new records: the diseases only, few-shot."""

from __future__ import annotations

from generators.base import register
from generators.medical.common import MedicalGenerator


@register
class LabelDiseases(MedicalGenerator):
    name = "label_diseases"
    task = "diseases"
