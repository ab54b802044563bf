"""Record filters (keep, or drop with a reason); importing the package registers the built-in kinds.

Kinds: "rouge_dedupe" (filters.rouge), "format" (filters.format), "leakage" (filters.leakage).
Reusable pieces: `RougeIndex`, `rouge_l`, `CJKTokenizer`, `Boilerplate`, `split_items`, `render_numbered`.
"""

from filters import format, leakage, rouge  # noqa: F401  (register the filters)
from filters.base import REGISTRY, Filter, FilterConfig, build_filter, register
from filters.boilerplate import Boilerplate, split_segments
from filters.format import FormatFilter, render_numbered, split_items, strip_numbering
from filters.leakage import LeakageFilter, normalize_text
from filters.rouge import CJKTokenizer, Match, RougeDedupe, RougeIndex, rouge_l

__all__ = [
    "REGISTRY",
    "Boilerplate",
    "CJKTokenizer",
    "Filter",
    "FilterConfig",
    "FormatFilter",
    "LeakageFilter",
    "Match",
    "RougeDedupe",
    "RougeIndex",
    "build_filter",
    "normalize_text",
    "register",
    "render_numbered",
    "rouge_l",
    "split_items",
    "split_segments",
    "strip_numbering",
]
