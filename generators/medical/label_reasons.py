"""`label_reasons`: the second labelling step: the evidence (`reason`) for diseases already named by an
earlier stage (its input is that stage's name), few-shot with demos that show the known diagnosis."""

from __future__ import annotations

from generators.base import register
from generators.medical.common import MedicalGenerator
from generators.medical.schema import DISEASES, INPUT


@register
class LabelReasons(MedicalGenerator):
    name = "label_reasons"
    task = "reasons"
    required = (INPUT, DISEASES)
