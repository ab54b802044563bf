"""The medical generators end to end through `python -m engine run` against the fake OpenAI server:
few-shot prompts, seeded demos, malformed answers, two-stage corrections, the labelling chain,
preference pairs and predictions that never lose an id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.errors import SpecError
from engine.spec import load_spec
from generators.medical.prompts import DemoPool
from tests.engine_helpers import ROOT, engine, outcomes

FIXTURES = ROOT / "tests" / "data"
CASES = [orjson.loads(line) for line in (FIXTURES / "medical_cases.jsonl").read_bytes().splitlines()]
LABELLED = [orjson.loads(line) for line in (FIXTURES / "medical_demos.jsonl").read_bytes().splitlines()]


def medical_spec(folder: Path, url: str, stages: str, *, seed: int = 7, provider: str = "") -> Path:
    """A spec in `folder` with the medical fixtures beside it and one `teacher` on the fake server."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("medical_cases.jsonl", "medical_demos.jsonl", "medical_pool.jsonl"):
        shutil.copy(FIXTURES / name, folder / name)
    spec = folder / "spec.toml"
    spec.write_text(
        f'[run]\nname = "med"\nout = "out"\nseed = {seed}\n\n'
        f'[providers.teacher]\nkind = "openai"\nbase_url = "{url}"\nmodel = "test-model"\n'
        f"max_concurrency = 4\n{provider}\n{stages}"
    )
    return spec


def answer(**fields: Any) -> str:
    return json.dumps(fields, ensure_ascii=False)


def user_texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def bodies_for(server: Any, text: str) -> list[dict[str, Any]]:
    """Request bodies whose last user message holds `text` (the preflight ping holds nothing)."""
    return [b for b in server.bodies if b.get("messages") and text in user_texts(b)[-1]]


def manifest(folder: Path) -> dict[str, Any]:
    return orjson.loads((folder / "out" / "manifest.json").read_bytes())


DIAGNOSE = """
[[stages]]
name = "dx"
generator = "diagnose"
provider = "teacher"
input = "medical_cases.jsonl"
demos = "medical_demos.jsonl"
k = 3
params = { temperature = 0.7, seed = 11 }
"""


def test_diagnose_few_shot_asks_for_json_with_seeded_demos(tmp_path: Path, fake_server) -> None:
    spec = medical_spec(tmp_path, fake_server.url, DIAGNOSE)
    # one answer per case, each in another wrapping: JSON, fenced JSON, numbered text, string fields
    answers = {
        "反复咳嗽、咳痰20年": answer(
            reason=["1. 反复咳嗽咳痰20年；", "2. FEV1/FVC 58%。"], diseases=["慢阻肺"]
        ),
        "双膝关节疼痛3年": '```json\n{"reason": ["骨摩擦感"], "diseases": ["膝骨关节炎"]}\n```',
        "发热、咽痛2天": "诊断：急性化脓性扁桃体炎\n诊断依据：\n1. 扁桃体脓性分泌物；\n2. WBC 16.8",
        "反复上腹痛、反酸2年": answer(reason=["食管下段黏膜破损"], diseases="1. 反流性食管炎；2. 慢性胃炎"),
    }
    for substring, text in answers.items():
        fake_server.script(substring, text)
    engine("run", spec, "--quiet")

    kept = {r["id"]: r for r in outcomes(tmp_path / "out", "dx", "kept")}
    assert kept["c01"]["reason"] == ["反复咳嗽咳痰20年", "FEV1/FVC 58%"]
    assert kept["c01"]["diseases"] == ["慢阻肺"]
    assert kept["c02"]["diseases"] == ["膝骨关节炎"]
    assert kept["c03"]["reason"] == ["扁桃体脓性分泌物", "WBC 16.8"]
    assert kept["c04"]["diseases"] == ["反流性食管炎", "慢性胃炎"]
    assert kept["c01"]["feature_content"] == CASES[0]["feature_content"]

    pool = DemoPool(tmp_path / "medical_demos.jsonl")
    for case in CASES:
        (body,) = bodies_for(fake_server, case["feature_content"])
        prompt = user_texts(body)[0]
        drawn = pool.draw(3, 7, case)  # run seed 7, record id
        for demo in pool.records:
            assert (demo["feature_content"] in prompt) == (demo in drawn)
        schema = body["response_format"]["json_schema"]["schema"]
        assert body["response_format"]["type"] == "json_schema"
        assert list(schema["properties"]) == ["reason", "diseases"]  # reason first by default
        assert prompt.index('"reason"') < prompt.index('"diseases"')
        assert body["seed"] == 11 and body["messages"][0]["role"] == "system"

    stats = manifest(tmp_path)["stages"]["dx"]["stats"]
    assert stats["records"] == 4 and stats["mean_diseases"] == 1.25 and stats["mean_reasons"] == 1.5
    status = engine("status", spec).stdout
    assert "mean_reason_chars" in status and "mean_record_chars" in status


def test_demo_sampling_is_reproducible_and_follows_the_run_seed(tmp_path: Path, fake_server) -> None:
    fake_server.set(answer=lambda body: answer(reason=["依据"], diseases=["某病"]))
    prompts = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        fake_server.reset_counts()
        engine("run", medical_spec(tmp_path / name, fake_server.url, DIAGNOSE, seed=seed), "--quiet")
        prompts[name] = sorted(
            user_texts(b)[0] for b in fake_server.bodies if b["messages"][0]["role"] == "system"
        )
        assert len(prompts[name]) == len(CASES)
    assert prompts["a"] == prompts["b"]
    assert prompts["a"] != prompts["c"]


def test_malformed_answers_are_resampled_then_rejected_with_raw_text(tmp_path: Path, fake_server) -> None:
    spec = medical_spec(tmp_path, fake_server.url, DIAGNOSE + "max_bad_output = 3\n")
    fake_server.script(
        "反复咳嗽、咳痰20年", ["我无法判断。", '{"reason": ["咳嗽"], "diseases": []}', "仍然无法判断"]
    )
    fake_server.script(
        "双膝关节疼痛3年", ['{"reason": ["关节痛"', answer(reason=["关节痛"], diseases=["膝骨关节炎"])]
    )
    fake_server.set(answer=lambda body: answer(reason=["依据"], diseases=["某病"]))
    engine("run", spec, "--quiet")

    (rejected,) = outcomes(tmp_path / "out", "dx", "rejected")
    assert rejected["id"] == "c01" and rejected["filter"] == "parse"
    assert rejected["raw_text"] == "仍然无法判断" and "no 'reason'" in rejected["reason"]
    assert [b["seed"] for b in bodies_for(fake_server, "反复咳嗽、咳痰20年")] == [
        11,
        12,
        13,
    ]  # a new seed each time
    kept = {r["id"]: r for r in outcomes(tmp_path / "out", "dx", "kept")}
    assert kept["c02"]["diseases"] == ["膝骨关节炎"] and kept["c02"]["meta"]["attempts"] == 2
    assert set(kept) == {"c02", "c03", "c04"}


TWO_STAGE = """
[[stages]]
name = "ts"
generator = "two_stage"
provider = "teacher"
input = "medical_cases.jsonl"
demos = "medical_demos.jsonl"
k = 2
json_mode = "json_object"
"""


def test_two_stage_keeps_both_turns_and_applies_the_correction(tmp_path: Path, fake_server) -> None:
    spec = medical_spec(tmp_path, fake_server.url, TWO_STAGE)
    copd = answer(reason=["FEV1/FVC 58%", "桶状胸"], diseases=["慢性阻塞性肺疾病急性加重"])
    fake_server.script("反复咳嗽、咳痰20年", [answer(diseases=["支气管哮喘"]), copd])
    knee = answer(reason=["骨摩擦感", "骨赘形成"], diseases=["膝关节骨关节炎"])
    fake_server.script("双膝关节疼痛3年", [answer(diseases=["1. 膝关节骨关节炎"]), knee])
    # turn 2 of c03 answers badly once: only turn 2 is asked again
    tonsil = answer(reason=["扁桃体脓性分泌物"], diseases=["急性化脓性扁桃体炎"])
    fake_server.script(
        "发热、咽痛2天", [answer(diseases=["急性化脓性扁桃体炎"]), "依据如下：扁桃体肿大", tonsil]
    )
    fake_server.set(answer=lambda body: answer(reason=["依据"], diseases=["某病"]))
    engine("run", spec, "--quiet")

    kept = {r["id"]: r for r in outcomes(tmp_path / "out", "ts", "kept")}
    c01 = kept["c01"]
    assert c01["initial_diseases"] == ["支气管哮喘"] and c01["diseases"] == ["慢性阻塞性肺疾病急性加重"]
    assert c01["corrected"] is True and c01["reason"] == ["FEV1/FVC 58%", "桶状胸"]
    assert [t["answer"] for t in c01["turns"]] == [answer(diseases=["支气管哮喘"]), copd]
    assert kept["c02"]["corrected"] is False and kept["c02"]["diseases"] == ["膝关节骨关节炎"]
    assert kept["c03"]["diseases"] == ["急性化脓性扁桃体炎"] and kept["c03"]["meta"]["calls"] == 3

    first, second = bodies_for(fake_server, "反复咳嗽、咳痰20年")[:1] + bodies_for(
        fake_server, "你给出的诊断是：支气管哮喘"
    )
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][:2] == first["messages"]  # turn 2 continues the same conversation
    assert second["messages"][2]["content"] == answer(diseases=["支气管哮喘"])
    assert "修正诊断" in second["messages"][3]["content"]
    assert first["response_format"] == {"type": "json_object"}
    assert len(bodies_for(fake_server, "发热、咽痛2天")) == 1  # turn 1 of c03 was asked once
    assert manifest(tmp_path)["stages"]["ts"]["stats"]["records"] == 4


LABELS = """
[[stages]]
name = "label_diseases"
generator = "label_diseases"
provider = "teacher"
input = "medical_cases.jsonl"
demos = "medical_demos.jsonl"
k = 6

[[stages]]
name = "label_reasons"
generator = "label_reasons"
provider = "teacher"
input = "label_diseases"
demos = "medical_demos.jsonl"
k = 6
"""


def test_labelling_chain_names_diseases_then_finds_their_evidence(tmp_path: Path, fake_server) -> None:
    spec = medical_spec(tmp_path, fake_server.url, LABELS)

    def teacher(body: dict[str, Any]) -> str:
        prompt = user_texts(body)[-1]
        if "已知诊断为" in prompt:
            known = prompt.split("已知诊断为：")[1].split("。")[0]
            return answer(reason=[f"支持{name}的依据" for name in known.split("；")])
        return answer(
            diseases=["慢性阻塞性肺疾病", "肺部感染"]
            if "反复咳嗽" in prompt.split("病历：")[-1]
            else ["某病"]
        )

    fake_server.set(answer=teacher)
    engine("run", spec, "--quiet")

    final = {r["id"]: r for r in outcomes(tmp_path / "out", "label_reasons", "kept")}
    assert sorted(final) == ["c01", "c02", "c03", "c04"]
    c01 = final["c01"]
    assert c01["diseases"] == ["慢性阻塞性肺疾病", "肺部感染"]
    assert c01["reason"] == ["支持慢性阻塞性肺疾病的依据", "支持肺部感染的依据"]
    assert c01["feature_content"] == CASES[0]["feature_content"]
    reasons_prompts = [
        user_texts(b)[-1] for b in fake_server.bodies if "已知诊断为" in str(b.get("messages"))
    ]
    assert len(reasons_prompts) == 4 and all(p.count("已知诊断：") == 6 for p in reasons_prompts)  # 6 demos
    disease_bodies = [
        b for b in fake_server.bodies if b.get("response_format") and "已知诊断为" not in str(b)
    ]
    assert all(
        list(b["response_format"]["json_schema"]["schema"]["properties"]) == ["diseases"]
        for b in disease_bodies
    )
    stats = manifest(tmp_path)["stages"]["label_reasons"]["stats"]
    assert stats["mean_diseases"] == 1.25 and stats["records"] == 4

    out = tmp_path / "submission.jsonl"
    engine("export", spec, "--stage", "label_reasons", "--format", "submission", "-o", out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [list(line) for line in lines] == [["id", "reason", "diseases", "feature_content"]] * 4
    first = next(line for line in lines if line["id"] == "c01")
    assert first["diseases"] == "1. 慢性阻塞性肺疾病；2. 肺部感染"
    assert first["reason"] == "1. 支持慢性阻塞性肺疾病的依据；\\n2. 支持肺部感染的依据。"


PAIRS = """
[[stages]]
name = "pairs"
generator = "preference_pairs"
provider = "teacher"
input = "medical_demos.jsonl"
k = 0

[[stages.filters]]
kind = "format"
schema = "generators.medical.preference_pairs:Disagreement"
"""


def test_preference_pairs_keep_disagreements_and_reject_agreements_with_a_reason(
    tmp_path: Path, fake_server
) -> None:
    spec = medical_spec(tmp_path, fake_server.url, PAIRS)
    fake_server.script("多饮、多尿、体重下降半年", answer(reason=["口渴"], diseases=["尿崩症"]))
    # the same diseases written differently (numbering, order, qualifier) is agreement
    fake_server.script("反复头晕2月", answer(reason=["血压高"], diseases=["1. 高脂血症", "2. 原发性高血压"]))
    fake_server.set(answer=lambda body: "无法判断")
    engine("run", spec, "--quiet")

    kept = {r["id"]: r for r in outcomes(tmp_path / "out", "pairs", "kept")}
    assert set(kept) == {"d01"}
    pair = kept["d01"]
    assert pair["chosen"] == {"reason": LABELLED[0]["reason"], "diseases": ["2型糖尿病", "高血压"]}
    assert pair["rejected"] == {"reason": ["口渴"], "diseases": ["尿崩症"]} and pair["agree"] is False
    rejected = {r["id"]: r for r in outcomes(tmp_path / "out", "pairs", "rejected")}
    assert rejected["d03"]["filter"] == "format" and "same diseases" in rejected["d03"]["reason"]
    assert all(rejected[rid]["filter"] == "parse" for rid in rejected if rid != "d03")
    assert len(rejected) == len(LABELLED) - 1  # nothing is lost: every record has an outcome

    spec.write_text(spec.read_text().split("[[stages.filters]]")[0])
    proc = engine("run", spec, check=False)
    assert proc.returncode == 2 and "preference_pairs drops agreeing pairs through a filter" in proc.stderr


PREDICT = """
[[stages]]
name = "predict"
generator = "predict"
provider = "teacher"
input = "medical_cases.jsonl"
mode = "{mode}"
max_bad_output = 2
"""


def test_predict_keeps_every_id_even_when_answers_cannot_be_parsed(tmp_path: Path, fake_server) -> None:
    spec = medical_spec(tmp_path, fake_server.url, PREDICT.format(mode="two_stage"))
    # c01: turn 1 never parses; c02: turn 1 does, turn 2 never does
    fake_server.script("反复咳嗽、咳痰20年", "抱歉，我无法回答")
    fake_server.script("双膝关节疼痛3年", [answer(diseases=["膝骨关节炎"]), "不是JSON", "还不是"])
    fake_server.set(answer=lambda body: answer(reason=["依据"], diseases=["某病"]))
    engine("run", spec, "--quiet")

    kept = {r["id"]: r for r in outcomes(tmp_path / "out", "predict", "kept")}
    assert sorted(kept) == ["c01", "c02", "c03", "c04"]
    assert kept["c01"]["diseases"] == [] and kept["c01"]["raw_text"] == "抱歉，我无法回答"
    assert kept["c02"]["diseases"] == ["膝骨关节炎"] and kept["c02"]["reason"] == []  # turn 1 kept
    assert "parse_error" in kept["c02"] and "parse_error" not in kept["c03"]
    assert kept["c03"]["diseases"] == ["某病"] and len(kept["c03"]["turns"]) == 2

    joint = medical_spec(tmp_path / "joint", fake_server.url, PREDICT.format(mode="joint"))
    engine("run", joint, "--quiet")
    kept = {r["id"]: r for r in outcomes(tmp_path / "joint" / "out", "predict", "kept")}
    assert (
        kept["c01"]["diseases"] == [] and kept["c04"]["diseases"] == ["某病"] and "turns" not in kept["c04"]
    )


def test_an_unlabelled_demo_pool_stops_before_any_request(tmp_path: Path, fake_server) -> None:
    spec = medical_spec(tmp_path, fake_server.url, DIAGNOSE)
    (tmp_path / "medical_demos.jsonl").write_text((FIXTURES / "medical_cases.jsonl").read_text())
    proc = engine("run", spec, check=False)
    assert proc.returncode == 2
    assert "medical_demos.jsonl:1: demo record has no 'diseases'" in proc.stderr
    assert fake_server.requests == 0


def test_a_stage_prompts_dir_replaces_the_built_in_files_it_holds(tmp_path: Path) -> None:
    prompts = ROOT / "tests" / "data" / "train_prompts"
    stages = (
        PREDICT.format(mode="joint") + f'demos = "medical_demos.jsonl"\nk = 2\nprompts_dir = "{prompts}"\n'
    )
    loaded = load_spec(medical_spec(tmp_path, "http://127.0.0.1:9/v1", stages))
    gen = loaded.generators["predict"]
    system, user = gen.messages(CASES[0])
    assert system["content"] == (prompts / "system.txt").read_text(encoding="utf-8").strip()
    assert user["content"].rstrip().endswith(CASES[0]["feature_content"])  # {feature_content} is the record
    assert user["content"].count("例：") == 2 and "{" not in user["content"].replace('{"', "")
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "joint_prompt.txt").write_text("x")
    bad = PREDICT.format(mode="joint") + 'prompts_dir = "typo"\n'
    with pytest.raises(
        SpecError, match=r"joint_prompt.txt: unknown prompt file \(known: system.txt, joint.txt"
    ):
        load_spec(
            medical_spec(
                tmp_path / "bad", "http://127.0.0.1:9/v1", bad.replace('"typo"', f'"{tmp_path / "typo"}"')
            )
        )
