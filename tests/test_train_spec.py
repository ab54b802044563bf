"""The train spec (validation, --set overrides) and the record -> example conversion, without training."""

from __future__ import annotations

import io
import json

import orjson
import pytest

from engine.errors import SpecError
from engine.jsonl import read_jsonl
from generators.medical.format import PromptFormat
from tests.train_helpers import RECORDS, TEST_SET, records
from trainers.cli import main as train_main
from trainers.data import examples, export_dpo, export_sft, read_sources
from trainers.fit import trl_config
from trainers.guard import check_test_overlap
from trainers.pairs import build_pairs
from trainers.spec import TRAINER_DEFAULTS, load_spec


def spec_file(tmp_path, text: str = ""):
    path = tmp_path / "train.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seed = 1\nbogus = 1\n", ":2: bogus: unknown key"),
        ("[lora]\nalpah = 4\n", ":2: lora.alpah: unknown key (did you mean 'alpha'?)"),
        ("[lora]\nzzz = 4\n", ":2: lora.zzz: unknown key (known: enabled, r, alpha, dropout, target_modules"),
        ("[sft]\nseed = 1\nmax_stepz = 4\n", ":3: sft.max_stepz: unknown key (did you mean 'max_steps'?)"),
        ("[sft]\nmode = 'both'\n", ":2: sft.mode: Input should be 'joint' or 'split' (got 'both')"),
        ("[lora]\nr = 'eight'\n", ":2: lora.r: Input should be a valid integer"),
        ("[data]\nvalidation_fraction = 1.5\n", ":2: data.validation_fraction: Input should be less than 1"),
        ("[first]\nc = [1]\n", ":2: first.c: Input should be a valid number (got [1])"),
        ("[first]\ntail_buckett = 1\n", ":2: first.tail_buckett: unknown key (did you mean 'tail_bucket'?)"),
        ("[data\n", ": invalid TOML"),
    ],
)
def test_bad_spec_fails_with_one_line_naming_file_line_and_key(tmp_path, text, expected):
    path = spec_file(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}{expected}")
    assert "\n" not in message


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read train spec"):
        load_spec(tmp_path / "nope.toml")


def test_every_path_is_absolute_from_the_spec_folder_once_loaded(tmp_path, monkeypatch):
    folder = tmp_path / "runs" / "x"
    folder.mkdir(parents=True)
    path = spec_file(
        folder,
        'base_model = "../models/m"\n[data]\ntrain = ["a.jsonl", "data/*.jsonl", "../r/spec.toml:answer"]\n'
        'demos = "demos.jsonl"\n[test_set]\nfiles = ["/abs/test.jsonl"]\n[first]\nstore = "topk"\n',
    )
    monkeypatch.chdir(tmp_path)  # whatever the working directory
    spec = load_spec(path.relative_to(tmp_path), ["sft.init_adapter=out/a", "resume_from_checkpoint=ck/1"])
    base = folder.resolve()
    assert spec.base_model == str(tmp_path.resolve() / "runs" / "models" / "m")
    stage = f"{base.parent / 'r' / 'spec.toml'}:answer"
    assert spec.data.train == [str(base / "a.jsonl"), str(base / "data" / "*.jsonl"), stage]
    assert spec.data.demos == str(base / "demos.jsonl") and spec.data.prompts_dir == ""
    assert spec.test_set.files == ["/abs/test.jsonl"]
    assert spec.sft.output_dir == str(base / "out" / "sft")
    assert spec.sft.init_adapter == str(base / "out" / "a")
    assert spec.sft.resume_from_checkpoint == str(base / "ck" / "1")
    assert spec.dpo.output_dir == str(base / "out" / "dpo") and spec.dpo.init_adapter == ""
    assert spec.first.store == str(base / "topk") and spec.first.output_dir == str(base / "out" / "first")


def test_set_overrides_bare_dotted_and_typed_values(tmp_path):
    path = spec_file(tmp_path, "[sft]\nmax_steps = 100\n[lora]\nr = 16\n")
    spec = load_spec(
        path,
        [
            "max_steps=2",  # a TRL key: goes to the command's table
            "output_dir=out/try",  # not a TOML literal: kept as a string
            "lora.r=4",
            'data.train=["a.jsonl", "b.jsonl"]',
            "seed=7",
            "learning_rate=1e-3",
        ],
    )
    assert spec.sft.max_steps == 2
    assert spec.sft.output_dir == str((tmp_path / "out" / "try").resolve())  # from the spec's folder
    assert spec.lora.r == 4
    assert spec.data.train == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    args = spec.trainer_args("sft")
    assert args["max_steps"] == 2 and args["learning_rate"] == 1e-3 and args["seed"] == 7
    assert args["report_to"] == TRAINER_DEFAULTS["report_to"]


def test_set_goes_to_the_dpo_table_for_dpo(tmp_path):
    spec = load_spec(spec_file(tmp_path), ["beta=0.3", "loss_type=['ipo']"], command="dpo")
    assert spec.trainer_args("dpo")["beta"] == 0.3
    assert spec.trainer_args("dpo")["loss_type"] == ["ipo"]
    assert "beta" not in spec.trainer_args("sft")


def test_set_bad_syntax_and_bad_value(tmp_path):
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(spec_file(tmp_path), ["max_steps"])
    with pytest.raises(SpecError, match="^--set lora.r=abc: lora.r: Input should be a valid integer"):
        load_spec(spec_file(tmp_path), ["lora.r=abc"])
    typo = r"^--set max_stepz=1: sft.max_stepz: unknown key \(did you mean 'max_steps'\?\)"
    with pytest.raises(SpecError, match=typo):
        load_spec(spec_file(tmp_path), ["max_stepz=1"])


def test_trl_rejection_becomes_one_line(tmp_path):
    spec = load_spec(spec_file(tmp_path), ["lr_scheduler_type='nope'"])
    with pytest.raises(SpecError) as err:
        trl_config(spec, "sft", tmp_path / "out")
    message = str(err.value)  # the table has no line in the file: the --set that filled it is named
    assert message.startswith("--set lr_scheduler_type='nope': sft: nope is not a valid")
    assert "\n" not in message
    spec = load_spec(spec_file(tmp_path, "[first]\npacking = true\n"))
    with pytest.raises(SpecError, match=r"train.toml:1: first: packing / padding_free: FIRST aligns"):
        trl_config(spec, "first", tmp_path / "out")


def test_cli_reports_bad_spec_on_one_line(tmp_path, capsys):
    path = spec_file(tmp_path, "[sft]\nmax_stepz = 4\n")
    assert train_main(["sft", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}:2: sft.max_stepz: unknown key (did you mean 'max_steps'?)"


def formatter(tmp_path, text: str = "") -> PromptFormat:
    return load_spec(spec_file(tmp_path, text)).prompt_format()


def test_joint_example_is_conversational_prompt_completion_with_reason_first(tmp_path):
    record = records()[0]
    example = formatter(tmp_path).example(record, "joint")
    assert [m["role"] for m in example["prompt"]] == ["system", "user"]
    assert [m["role"] for m in example["completion"]] == ["assistant"]
    assert record["feature_content"] in example["prompt"][1]["content"]
    answer = json.loads(example["completion"][0]["content"])
    assert list(answer) == ["reason", "diseases"]
    assert answer == {"reason": record["reason"], "diseases": record["diseases"]}


def test_answer_order_is_an_option_and_the_reasons_task_shows_the_diseases(tmp_path):
    record = {"id": 1, "feature_content": "病历", "diseases": ["感冒"], "reason": ["咳嗽"]}
    fmt = formatter(tmp_path, "[data]\nreason_first = false\n")
    assert list(json.loads(fmt.answer(record, "joint"))) == ["diseases", "reason"]
    assert json.loads(fmt.answer(record, "diseases")) == {"diseases": ["感冒"]}
    assert json.loads(fmt.answer(record, "reasons")) == {"reason": ["咳嗽"]}
    assert "感冒" in fmt.messages(record, "reasons")[1]["content"]
    assert "病历" in fmt.messages(record, "joint")[1]["content"]


def test_an_official_string_label_is_trained_as_a_list(tmp_path):
    official = {"diseases": "1. 感冒；2. 咽炎", "reason": "1. 咳嗽；\\n2. 发热"}
    record = {"id": 1, "feature_content": "病历", **official}
    assert json.loads(formatter(tmp_path).answer(record, "joint")) == {
        "reason": ["咳嗽", "发热"],
        "diseases": ["感冒", "咽炎"],
    }


def test_demos_appear_in_the_prompt_but_never_the_record_itself(tmp_path):
    fmt = formatter(tmp_path, f'[data]\ndemos = "{RECORDS}"\nk = 2\ndemo_choice = "first"\n')
    first, second, third = records()[:3]
    user = fmt.messages(third, "joint")[1]["content"]
    assert first["feature_content"] in user and second["feature_content"] in user
    own = fmt.messages(first, "joint")[1]["content"]
    assert own.count(first["feature_content"]) == 1 and second["feature_content"] in own


def test_missing_field_names_the_record(tmp_path):
    with pytest.raises(SpecError, match=r"record 9: missing field 'diseases'"):
        examples(formatter(tmp_path), [{"id": 9, "feature_content": "x", "reason": ["y"]}], "joint")


def test_stage_source_reads_kept_shards_and_skips_a_torn_line(tmp_path):
    run = tmp_path / "run"
    kept = run / "results" / "answer" / "kept"
    kept.mkdir(parents=True)
    stages = "".join(f'[[stages]]\nname = "{name}"\ngenerator = "template"\n' for name in ("answer", "later"))
    (run / "spec.toml").write_text(f'[run]\nname = "x"\nout = "results"\n{stages}')
    (kept / "shard-00000.jsonl").write_bytes(RECORDS.read_bytes()[:-1] + b'\n{"id": 99, "feat')
    spec = load_spec(spec_file(tmp_path), ["data.train=['run/spec.toml:answer']"])
    got = read_sources(spec, spec.data.train, "data.train")
    assert [r["id"] for r in got] == [r["id"] for r in records()]
    spec = load_spec(spec_file(tmp_path), ["data.train=['run/spec.toml:other']"])
    with pytest.raises(
        SpecError, match=r"data.train: .*/run/spec.toml: no stage named 'other' \(stages: answer, later\)$"
    ):
        read_sources(spec, spec.data.train, "data.train")
    spec = load_spec(spec_file(tmp_path), ["data.train=['run/spec.toml:later']"])
    with pytest.raises(
        SpecError,
        match=r"data.train: .*/results/later: no kept records yet; run `python -m engine run .*/run/spec",
    ):
        read_sources(spec, spec.data.train, "data.train")


def test_test_set_overlap_refuses_unless_forced(tmp_path):
    spec = load_spec(spec_file(tmp_path, f'[test_set]\nfiles = ["{TEST_SET}"]\n'))
    expected = r"test_set: 1 training record\(s\) overlap .* id 3: exact copy in .*'t2'\); "
    with pytest.raises(SpecError, match=expected):
        check_test_overlap(spec, records())
    forced = load_spec(spec_file(tmp_path, f'force = true\n[test_set]\nfiles = ["{TEST_SET}"]\n'))
    assert [r["id"] for r in check_test_overlap(forced, records())] == [3]


def test_a_lightly_edited_test_record_counts_as_overlap(tmp_path):
    text = records()[4]["feature_content"]
    edited = {"id": "t9", "feature_content": text + "，无发热"}
    (tmp_path / "test.jsonl").write_text(json.dumps(edited, ensure_ascii=False) + "\n")
    spec = load_spec(spec_file(tmp_path, '[test_set]\nfiles = ["test.jsonl"]\n'))
    with pytest.raises(SpecError, match=r"id 5: ngram overlap"):
        check_test_overlap(spec, records())


def test_build_pairs_joins_by_id_and_drops_agreeing_answers(tmp_path):
    teacher = records()[:4]
    student = [
        {**teacher[0], "diseases": list(reversed(teacher[0]["diseases"])), "reason": ["别的"]},  # agrees
        {**teacher[1], "diseases": ["感冒"], "reason": ["咳嗽"]},
        {**teacher[2], "diseases": ["胃炎"], "reason": ["腹痛"]},
        # teacher[3] has no student answer
    ]
    fmt = formatter(tmp_path)
    pairs = build_pairs(teacher, list(reversed(student)), fmt)
    assert [p["id"] for p in pairs] == [2, 3]
    assert json.loads(pairs[0]["chosen"][0]["content"])["diseases"] == teacher[1]["diseases"]
    assert json.loads(pairs[0]["rejected"][0]["content"])["diseases"] == ["感冒"]
    assert pairs[0]["prompt"] == fmt.messages(teacher[1], "joint")
    assert len(build_pairs(teacher, student, fmt, agree_on="answer")) == 3


def test_exports_for_engine_export():
    out = io.BytesIO()
    assert export_sft(records()[:2], out) == 2
    first = orjson.loads(out.getvalue().splitlines()[0])
    assert first["id"] == 1 and first["completion"][0]["role"] == "assistant"
    stage_record = {
        **records()[0],
        "chosen": {"reason": ["a"], "diseases": ["b"]},
        "rejected": {"reason": ["c"], "diseases": ["d"]},
    }
    out = io.BytesIO()
    assert export_dpo([stage_record], out) == 1
    pair = orjson.loads(out.getvalue())
    assert json.loads(pair["rejected"][0]["content"]) == {"reason": ["c"], "diseases": ["d"]}
    assert pair["prompt"][1]["content"].count(records()[0]["feature_content"]) == 1


def test_fixture_records_are_what_the_tests_assume():
    assert len(list(read_jsonl(RECORDS))) == 8
