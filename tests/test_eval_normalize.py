"""Splitting and normalising disease names and reason points, with the Chinese formatting variants
seen in answers (numbering, full-width characters, qualifiers, literal backslash-n)."""

import pytest

from evals.normalize import (
    as_items,
    normalize_disease,
    normalize_point,
    remove_qualifiers,
    split_diseases,
    split_reason,
    strip_numbering,
    to_halfwidth,
)


def test_halfwidth_converts_fullwidth_ascii_and_ideographic_space():
    assert to_halfwidth("（１级）ＰＣＯＳ；，　") == "(1级)PCOS;, "
    assert to_halfwidth("。、℃") == "。、℃"  # CJK punctuation without an ASCII twin stays


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("1. 高血压", "高血压"),
        ("2、糖尿病", "糖尿病"),
        ("(3)贫血", "贫血"),
        ("（4）贫血", "贫血"),
        ("5）失眠", "失眠"),
        ("⑥ 皮炎", "皮炎"),
        ("2型糖尿病", "2型糖尿病"),  # a number that belongs to the name
        ("36.7℃发热", "36.7℃发热"),  # a decimal is not a list number
    ],
)
def test_strip_numbering(item, expected):
    assert strip_numbering(item) == expected


def test_split_diseases_on_every_separator_and_numbering():
    assert split_diseases("1. 高尿酸血症；2. 皮炎；3. 失眠；4. 原发性高血压（1级）") == [
        "高尿酸血症",
        "皮炎",
        "失眠",
        "原发性高血压（1级）",
    ]
    assert split_diseases("皮炎|失眠|高尿酸血症") == ["皮炎", "失眠", "高尿酸血症"]
    assert split_diseases("贫血、失眠,皮炎;发热，咳嗽") == ["贫血", "失眠", "皮炎", "发热", "咳嗽"]
    assert split_diseases("发热。") == ["发热"]
    assert split_diseases("") == []


def test_split_diseases_keeps_separators_inside_qualifiers():
    assert split_diseases("高血压（1级，高危）、2型糖尿病") == ["高血压（1级，高危）", "2型糖尿病"]


def test_remove_qualifiers_handles_both_widths_and_nesting():
    assert remove_qualifiers("原发性高血压（1级）") == "原发性高血压"
    assert remove_qualifiers("多囊卵巢综合征(PCOS)") == "多囊卵巢综合征"
    assert remove_qualifiers("肺炎（右下肺（细菌性））【待查】") == "肺炎"


def test_normalize_disease_variants_meet():
    forms = ["４．原发性高血压（１级）", "原发性高血压(1级)", " 原发性 高血压 "]
    assert {normalize_disease(f) for f in forms} == {"原发性高血压"}
    assert normalize_disease("多囊卵巢综合征（PCOS）", drop_qualifiers=False) == "多囊卵巢综合征(pcos)"
    assert normalize_disease("（PCOS）") == "(pcos)"  # only a qualifier: kept rather than emptied


def test_split_reason_official_literal_backslash_n():
    text = "1. 发热10天；\\n2. 无咳嗽；无咳痰；\\n3. 体温36.7℃。"
    assert split_reason(text) == ["发热10天", "无咳嗽；无咳痰", "体温36.7℃"]


def test_split_reason_inline_numbering_without_separator():
    text = "1. 患者25岁；2. 末次月经2023.7.2；3. 血压110/60mmHg。"
    assert split_reason(text) == ["患者25岁", "末次月经2023.7.2", "血压110/60mmHg"]


def test_split_reason_real_newlines_and_other_numbering():
    assert split_reason("1.发热\n2)咳嗽\n\n(3)腹痛；④头痛") == ["发热", "咳嗽", "腹痛", "头痛"]


def test_split_reason_unnumbered_line_falls_back_to_semicolons():
    assert split_reason("发热；咳嗽。") == ["发热", "咳嗽"]
    assert split_reason("") == []


def test_as_items_lists_are_one_item_each():
    assert as_items(["1. 发热；", "2. 咳嗽。", ""], split_reason, field="reason") == ["发热", "咳嗽"]
    assert as_items(None, split_diseases, field="diseases") == []
    with pytest.raises(ValueError, match="'diseases' must be a string or a list"):
        as_items({"a": 1}, split_diseases, field="diseases")


def test_normalize_point_strips_number_terminator_width_and_spaces():
    assert normalize_point("3. 血压 142／78mmHg；") == "血压142/78mmhg"
