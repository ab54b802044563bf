"""`diagnose`: one request answers both fields (`reason` + `diseases`), zero-shot or with k seeded demos."""

from __future__ import annotations

from generators.base import register
from generators.medical.common import MedicalGenerator


@register
class Diagnose(MedicalGenerator):
    name = "diagnose"
    task = "joint"
