"""One prompt format from training to prediction (generators/medical/format.py): what `engine train sft
--dump-examples` shows a model is exactly what a `predict` stage with `format_from` asks it, for zero-shot,
few-shot and the two-model (split) format; the student-style provider warning; the saved format's errors;
`--dump-examples` for each method; and `engine demos`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli import main as engine_main
from engine.errors import SpecError
from engine.spec import load_spec as load_run_spec
from generators.medical.format import FORMAT_FILE
from tests.engine_helpers import ROOT, engine, outcomes
from tests.train_helpers import PROMPTS, RECORDS, records, write_spec
from trainers.data import save_format, sft_tasks
from trainers.spec import load_spec

GOLD = {r["feature_content"]: r for r in records()}


def train_spec(folder: Path, data: str = "", sft: str = "") -> Path:
    """A train spec on the fixture records with the built-in prompts, seed 5; `data` adds [data] keys,
    `sft` [sft] keys."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_spec(folder, f"[sft]\noutput_dir = 'out/sft'\n{sft}")
    text = path.read_text(encoding="utf-8").replace(f'prompts_dir = "{PROMPTS}"\n', "")
    path.write_text(text.replace("[data]\n", f"seed = 5\n[data]\n{data}", 1), encoding="utf-8")
    return path


def dump(spec: Path, capsys: Any, command: str = "sft") -> list[dict[str, Any]]:
    """`engine train COMMAND SPEC --dump-examples FILE`, in-process (one torch import for the tests)."""
    out = spec.parent / f"{command}-rows.jsonl"
    assert engine_main(["train", command, str(spec), "--dump-examples", str(out)]) == 0
    assert "nothing was trained" in capsys.readouterr().err
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def gold_answer(body: dict[str, Any]) -> str:
    """The fixture record's own labels: every prompt ends with the record's text (the preflight ping
    asks about none)."""
    user = body["messages"][-1]["content"].rstrip()
    match = [r for text, r in GOLD.items() if user.endswith(text)]
    if not match:
        return "pong"
    record = match[0]
    return json.dumps({"reason": record["reason"], "diseases": record["diseases"]}, ensure_ascii=False)


def predict_spec(folder: Path, url: str, stage: str) -> Path:
    """A run spec predicting the fixture records (labels removed) with the stage keys in `stage`."""
    test = folder / "test.jsonl"
    test.write_bytes(
        b"".join(
            orjson.dumps({"id": r["id"], "feature_content": r["feature_content"]}) + b"\n" for r in records()
        )
    )
    path = folder / "predict.toml"
    path.write_text(
        f'[run]\nname = "p"\nout = "run"\nseed = 99\n'
        f'[providers.student]\nkind = "openai"\nbase_url = "{url}"\nmodel = "student"\n'
        f'[providers.reasons]\nkind = "openai"\nbase_url = "{url}"\nmodel = "reasons"\n'
        '[[stages]]\nname = "predict"\ngenerator = "predict"\nprovider = "student"\n'
        f'input = "test.jsonl"\n{stage}',
        encoding="utf-8",
    )  # fmt: skip
    return path


FORMATS = {
    "zero-shot": ("", ""),
    "few-shot": (f'demos = "{RECORDS}"\nk = 3\n', ""),  # demo_choice "random", seeded by the train seed
    "split, first demos": (f'demos = "{RECORDS}"\nk = 2\ndemo_choice = "first"\n', "mode = 'split'\n"),
}
PREDICT_KEYS = {"split, first demos": 'reasons_provider = "reasons"\n'}  # the second model


@pytest.mark.parametrize("name", list(FORMATS))
def test_prediction_asks_exactly_what_training_showed(tmp_path: Path, fake_server, capsys, name) -> None:
    data, sft = FORMATS[name]
    spec_path = train_spec(tmp_path, data, sft)
    rows = dump(spec_path, capsys)
    out = tmp_path / "out" / "sft"
    assert not out.exists()  # --dump-examples trains nothing
    assert {r["id"] for r in rows} == set(range(1, 9)) and {r["split"] for r in rows} == {
        "train",
        "validation",
    }
    spec = load_spec(spec_path)
    save_format(spec.prompt_format(), out, sft_tasks(spec), None)  # what train_sft writes before step 1

    fake_server.set(models=["student", "reasons"], answer=gold_answer)
    stage = f'format_from = "{out}"\n' + PREDICT_KEYS.get(name, "")  # no mode: the format's own
    run = predict_spec(tmp_path, fake_server.url, stage)
    engine("run", run, "--quiet")

    asked = [b for b in fake_server.bodies if b.get("messages") and b["messages"][0]["role"] == "system"]
    for task in sft_tasks(spec):
        model = "reasons" if task == "reasons" else "student"
        got = sorted(orjson.dumps(b["messages"]) for b in asked if b["model"] == model)
        want = sorted(orjson.dumps(r["prompt"]) for r in rows if r["task"] == task)
        assert got == want and len(want) == 8, task
    kept = {r["id"]: r for r in outcomes(tmp_path / "run", "predict", "kept")}
    assert all(kept[r["id"]]["diseases"] == r["diseases"] for r in records())
    if "k = " in data:
        assert "示例1" in rows[0]["prompt"][1]["content"]  # the few-shot cases really show demos


def test_one_record_renders_identically_at_training_and_prediction_time(tmp_path: Path) -> None:
    """In-process, one record: the trainer's example prompt == the predict stage's request messages."""
    spec = load_spec(train_spec(tmp_path, f'demos = "{RECORDS}"\nk = 2\n', "mode = 'split'\n"))
    fmt, record = spec.prompt_format(), records()[3]
    save_format(fmt, tmp_path / "adapters", sft_tasks(spec), None)
    run = load_run_spec(
        predict_spec(
            tmp_path, "http://127.0.0.1:9/v1", 'format_from = "adapters"\nreasons_provider = "reasons"\n'
        )
    )
    predict = run.generators["predict"]
    assert predict.mode == "split"
    question = {"id": record["id"], "feature_content": record["feature_content"]}
    assert predict.messages(question, "diseases") == fmt.example(record, "diseases")["prompt"]
    assert (
        predict.messages(question, "reasons", record["diseases"]) == fmt.example(record, "reasons")["prompt"]
    )
    demos = fmt.demos_for(record)
    assert len(demos) == 2 and record["id"] not in {d["id"] for d in demos}  # never the record itself


def test_a_first_student_is_asked_exactly_as_its_labelled_records_were_rendered(
    tmp_path: Path, capsys, caplog
) -> None:
    """FIRST on labelled records: `train first --dump-examples` renders them with [data]'s format (the rows
    to capture the teacher's top-k on), `train first` saves that format beside the adapter, and a predict
    stage with `format_from` = the FIRST output asks every record with the messages it was trained on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.train_helpers import FAST, tiny_model
    from trainers.first.teacher import write_teacher_store
    from trainers.first.trainer import train_first

    path = train_spec(tmp_path, f'demos = "{RECORDS}"\nk = 2\n')  # few-shot: demos drawn per record
    first = 'store = "store"\nkey_field = "id"\nc = "none"\noutput_dir = "out/first"\nsave_strategy = "no"\n'
    fast = FAST.replace("512", "1024")  # the built-in prompt with two demos is longer than 512 tokens
    path.write_text(
        f"{path.read_text(encoding='utf-8')}[first]\n{first}max_steps = 1\n{fast}", encoding="utf-8"
    )
    rows = dump(path, capsys, command="first")
    assert sorted(r["id"] for r in rows) == list(range(1, 9)) and "示例1" in rows[0]["prompt"][1]["content"]
    teacher = tiny_model()  # the store: the rows as dumped, scored as the capture stage scores them
    write_teacher_store(
        AutoModelForCausalLM.from_pretrained(teacher), AutoTokenizer.from_pretrained(teacher), rows,
        str(tmp_path / "store"), key_field="id",
    )  # fmt: skip
    (summary,) = train_first(load_spec(path, command="first"))
    assert summary["alignment"]["distilled_share"] == 1 and summary["alignment"]["prompt_mismatches"] == 0
    out = tmp_path / "out" / "first"
    spec = load_spec(path, command="first")
    assert orjson.loads((out / FORMAT_FILE).read_bytes()) == spec.prompt_format().to_dict(["joint"])

    run = load_run_spec(predict_spec(tmp_path, "http://127.0.0.1:9/v1", f'format_from = "{out}"\n'))
    predict = run.generators["predict"]
    assert predict.mode == "joint"
    for row, record in zip(sorted(rows, key=lambda r: r["id"]), records(), strict=True):
        question = {"id": record["id"], "feature_content": record["feature_content"]}
        assert predict.messages(question, "joint") == row["prompt"], record["id"]

    # the same rows, given as rendered rows, train too, but carry no format: the file the labelled run
    # left is removed, so format_from cannot ask the new student in a format it may not have seen
    (tmp_path / "rows.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    text = path.read_text(encoding="utf-8").replace(f'train = ["{RECORDS}"]', 'train = ["rows.jsonl"]')
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="trainers"):
        (summary,) = train_first(load_spec(path, command="first"))
    assert summary["alignment"]["prompt_mismatches"] == 0 and not (out / FORMAT_FILE).exists()
    assert "prompt-format keys do not apply" in caplog.text and f"{FORMAT_FILE}: removed" in caplog.text
    # one kind per run: a labelled record among rows is refused, naming it
    (tmp_path / "rows.jsonl").write_bytes(
        (tmp_path / "rows.jsonl").read_bytes() + orjson.dumps({**records()[0], "id": 99}) + b"\n"
    )
    with pytest.raises(SpecError, match=r"data.train: record 99 is a record without `prompt`"):
        train_first(load_spec(path, command="first"))


def saved_format(folder: Path, tasks: tuple[str, ...] = ("joint",), data: str = "") -> Path:
    spec = load_spec(train_spec(folder / "train", data))
    save_format(spec.prompt_format(), folder / "adapter", list(tasks), None)  # type: ignore[arg-type]
    return folder / "adapter"


def local_spec(folder: Path, adapter: Path, stage: str = "") -> Path:
    path = folder / "spec.toml"
    (folder / "test.jsonl").write_text('{"id": 1, "feature_content": "主诉: 发热"}\n', encoding="utf-8")
    path.write_text(
        '[run]\nname = "s"\n[providers.student]\nkind = "local"\n'
        f'adapter = "{adapter}"\n[[stages]]\nname = "predict"\ngenerator = "predict"\n'
        f'provider = "student"\ninput = "test.jsonl"\n{stage}',
        encoding="utf-8",
    )
    return path


def test_a_student_without_format_from_warns_with_the_line_to_add(tmp_path: Path, caplog) -> None:
    adapter = saved_format(tmp_path)
    with caplog.at_level(logging.WARNING, "generators.medical.predict"):
        load_run_spec(local_spec(tmp_path, adapter))
    assert "no format_from" in caplog.text and 'add format_from = "adapter"' in caplog.text
    caplog.clear()
    (tmp_path / "other").mkdir()
    with caplog.at_level(logging.WARNING, "generators.medical.predict"):
        load_run_spec(local_spec(tmp_path / "other", tmp_path / "foreign-adapter"))
    assert "add format_from = <its train output dir>" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "generators.medical.predict"):
        load_run_spec(local_spec(tmp_path, adapter, f'format_from = "{adapter}"\n'))
    assert caplog.text == ""  # asked as trained: nothing to say
    # a real command shows the warning on stderr
    proc = engine("status", local_spec(tmp_path, adapter))
    assert 'add format_from = "adapter"' in proc.stderr


def test_a_stage_may_change_the_saved_format_and_is_told_what_changed(tmp_path: Path, caplog) -> None:
    adapter = saved_format(tmp_path, data=f'demos = "{RECORDS}"\nk = 2\n')
    with caplog.at_level(logging.WARNING, "generators.medical.predict"):
        run = load_run_spec(local_spec(tmp_path, adapter, f'format_from = "{adapter}"\nk = 4\n'))
    assert "with changes: k 2 -> 4" in caplog.text
    question = {"id": "x", "feature_content": "主诉: 发热"}
    assert run.generators["predict"].messages(question)[1]["content"].count("示例") == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, "generators.medical.predict"):
        load_run_spec(local_spec(tmp_path, adapter, f'format_from = "{adapter}"\nmode = "two_stage"\n'))
    assert "mode 'two_stage' asks diseases/check prompts, but the student" in caplog.text
    assert "was trained on joint only" in caplog.text


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ('mode = "split"\n', 'mode = "split" needs `reasons_provider`'),
        ('mode = "split"\nreasons_provider = "nope"\n', "reasons_provider 'nope' is not a declared provider"),
        ('reasons_provider = "student"\n', "reasons_provider is for mode = \"split\" (mode is 'joint')"),
        ('format_from = "nowhere"\n', f"format_from {{}}/nowhere: no {FORMAT_FILE} there or in its parent"),
    ],
)
def test_two_model_and_format_from_mistakes_stop_before_any_request(tmp_path, stage, message) -> None:
    with pytest.raises(SpecError) as err:
        load_run_spec(local_spec(tmp_path, tmp_path, stage))
    assert message.format(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_or_split_subfolder_finds_the_format_of_its_run(tmp_path: Path) -> None:
    adapter = saved_format(tmp_path, tasks=("diseases", "reasons"))
    (adapter / "checkpoint-200").mkdir(parents=True)
    stage = f'format_from = "{adapter / "checkpoint-200"}"\nreasons_provider = "student"\n'
    run = load_run_spec(local_spec(tmp_path, adapter / "checkpoint-200", stage))
    assert run.generators["predict"].mode == "split"


def test_dump_examples_for_dpo_first_stdout_and_misuse(tmp_path: Path, capsys, caplog) -> None:
    teacher = records()[:4]
    student = [{**r, "diseases": ["感冒"]} for r in teacher]
    (tmp_path / "student.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in student))
    spec = train_spec(tmp_path, f'teacher = ["{RECORDS}"]\nstudent = ["student.jsonl"]\n')
    spec.write_text(spec.read_text().replace("validation_fraction = 0.25", "validation_fraction = 0"))
    pairs = dump(spec, capsys, command="dpo")
    assert [p["id"] for p in pairs] == [1, 2, 3, 4] and {p["split"] for p in pairs} == {"train"}
    assert json.loads(pairs[0]["rejected"][0]["content"])["diseases"] == ["感冒"]
    assert pairs[0]["prompt"] == load_spec(spec).prompt_format().messages(records()[0], "joint")

    first = tmp_path / "first.toml"
    (tmp_path / "first.jsonl").write_text(
        '{"key": "a", "prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", '
        '"content": "x"}]}\n',
        encoding="utf-8",
    )
    first.write_text('[data]\ntrain = ["first.jsonl"]\nvalidation_fraction = 0\n[first]\nstore = "s"\n')
    # FIRST's rows arrive rendered: each as the trainer reads it
    assert dump(first, capsys, command="first") == [
        {
            "id": "a",
            "split": "train",
            "key": "a",
            "prompt": [{"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": "x"}],
        }
    ]
    assert not (tmp_path / "out").exists()  # nothing trained, no store opened
    first.write_text(first.read_text().replace("[data]\n", "[data]\nk = 2\n"))
    with caplog.at_level(logging.WARNING, logger="trainers"):
        assert len(dump(first, capsys, command="first")) == 1
    assert "[data] k: prompt-format keys do not apply to `train first`" in caplog.text

    head = subprocess.run(  # to a pipe that closes early: the first line, no traceback
        f"{sys.executable} -m engine train sft {train_spec(tmp_path)} --dump-examples - | head -c 20",
        shell=True, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert head.stdout.startswith('{"id":1') and "Traceback" not in head.stderr
    capsys.readouterr()
    assert engine_main(["train", "sft", str(train_spec(tmp_path)), "--dump-examples", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("is a folder; give a file name")


def labelled_file(path: Path) -> None:
    rows = [
        {
            "id": "a",
            "feature_content": "主诉: 咳嗽",
            "diseases": "1. 肺炎；2. 高血压",
            "reason": "1. 咳嗽；\\n2. 血压高",
        },
        {"id": "b", "feature_content": "主诉: 头痛"},  # unlabelled
        {"id": "c", "feature_content": "主诉：咳嗽 ", "diseases": ["肺炎"], "reason": ["咳"]},  # repeats a
        {"id": "d", "feature_content": "主诉: 多饮", "diseases": ["2型糖尿病"], "reason": ["多饮"]},
        {"id": "e", "feature_content": "主诉: 胸痛", "diseases": ["冠心病", "心律失常"], "reason": ["胸痛"]},
        {"id": "f", "feature_content": "主诉: 发热", "diseases": ["肺炎"], "reason": ["发热"]},
    ]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def demo_ids(folder: Path, *args: str) -> list[str]:
    out = folder / "demos.jsonl"
    engine("demos", folder / "labelled.jsonl", *args, "-o", out)
    return [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()]


def test_engine_demos_builds_a_labelled_pool_deterministically(tmp_path: Path) -> None:
    labelled_file(tmp_path / "labelled.jsonl")
    assert demo_ids(tmp_path, "--k", "2") == ["a", "d"]  # first: file order, b unlabelled, c a repeat
    assert demo_ids(tmp_path, "--k", "2", "--pick", "spread") == [
        "a",
        "e",
    ]  # a: 2 new diseases, then e: 2 more (d: 1)
    drawn = demo_ids(tmp_path, "--k", "2", "--pick", "random", "--seed", "3")
    assert drawn == demo_ids(tmp_path, "--k", "2", "--pick", "random", "--seed", "3") and len(drawn) == 2
    first = orjson.loads((tmp_path / "demos.jsonl").read_bytes().splitlines()[0])
    assert set(first) == {"id", "feature_content", "diseases", "reason"}
    proc = engine("demos", tmp_path / "labelled.jsonl", "--k", "9", "-o", tmp_path / "all.jsonl")
    assert "1 unlabelled, 1 repeated input" in proc.stderr and "only 4 usable records" in proc.stderr
    spec = load_run_spec(local_spec(tmp_path, tmp_path, 'demos = "all.jsonl"\nk = 1\n'))
    assert spec.generators["predict"].format.pool[0]["diseases"] == ["肺炎", "高血压"]  # a pool stages read
    bad = engine("demos", tmp_path / "labelled.jsonl", "--k", "2", "-o", tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: -o ") and "Traceback" not in bad.stderr
