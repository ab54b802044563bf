"""Three small versions of a diagnosis run, made with the real engine against the fake server, for the
viewer's tests and screenshots: Chinese answers that grow from v1 to v3, a near-duplicate record
(rouge_dedupe), a format rejection, an unparseable answer (v2) and a failed request (v1).

`python -m tests.view_fixture DIR` builds them into DIR (used for docs/view.md's screenshots).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from engine import history
from tests.engine_helpers import ROOT, engine
from tests.server import FakeServer, last_user_text

CASES = ROOT / "tests" / "data" / "view_cases.jsonl"
SPEC = """[run]
name = "{name}"
description = "{description}"
out = "out"
seed = 1

[providers.teacher]
kind = "openai"
base_url = "{url}"
model = "{model}"
api_key_env = "TEST_ENGINE_KEY"
max_concurrency = 4
max_retries = 0

[[stages]]
name = "dx"
generator = "diagnose"
provider = "teacher"
input = "cases.jsonl"
k = 0
max_bad_output = 2

[[stages.filters]]
kind = "format"
list_fields = ["diseases", "reason"]
name_fields = ["diseases"]
max_items = {{ diseases = 4 }}

[[stages.filters]]
kind = "rouge_dedupe"
fields = ["feature_content"]
threshold = 0.7
"""

# chief complaint (in the prompt) -> per version: (diseases, reason points)
ANSWERS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "反复胸闷、胸痛3年": {
        "v1": (["冠心病"], ["活动后胸骨后压榨样疼痛"]),
        "v2": (["不稳定型心绞痛", "高血压"], ["胸痛3年，近2天静息时发作", "V1-V4导联ST段压低0.1mV"]),
        "v3": (
            ["不稳定型心绞痛", "高血压2级", "2型糖尿病"],
            [
                "胸骨后压榨样疼痛，静息时发作",
                "心电图V1-V4导联ST段压低0.1mV",
                "肌钙蛋白I正常",
                "高血压病史10年",
            ],
        ),
    },
    "发热、咳嗽、咳黄痰5天": {
        "v1": (["肺炎"], ["发热、咳黄痰"]),
        "v2": (["社区获得性肺炎"], ["发热，体温最高39.2℃", "右下肺湿啰音", "WBC 15.2×10^9/L"]),
        "v3": (
            ["社区获得性肺炎"],
            [
                "受凉后发热，最高39.2℃",
                "右下肺可闻及湿啰音",
                "WBC 15.2×10^9/L，中性粒细胞88%",
                "胸片右下肺大片状阴影",
            ],
        ),
    },
    "多饮、多尿、消瘦3月": {
        "v1": (["糖尿病"], ["多饮多尿"]),
        "v2": (["2型糖尿病"], ["多饮、多尿、体重下降6kg", "空腹血糖11.6mmol/L"]),
        "v3": (["2型糖尿病"], ["口干多饮，体重下降6kg", "空腹血糖11.6mmol/L", "糖化血红蛋白9.1%"]),
    },
    "右上腹痛伴恶心": {
        "v1": (["胆囊炎"], ["右上腹痛"]),
        "v2": (["急性胆囊炎", "胆囊结石"], ["进食油腻后右上腹痛", "墨菲征阳性"]),
        "v3": (
            ["急性结石性胆囊炎"],
            ["油腻饮食后右上腹痛，放射至右肩背", "墨菲征阳性", "超声示胆囊壁增厚伴结石"],
        ),
    },
    "反复咳嗽、咳痰20年": {
        "v1": (["慢阻肺"], ["反复咳嗽咳痰20年", "FEV1/FVC 56%"]),
        "v2": (["慢性阻塞性肺疾病急性加重"], ["反复咳嗽咳痰20年", "FEV1/FVC 56%", "桶状胸"]),
        "v3": (
            ["慢性阻塞性肺疾病急性加重", "Ⅱ型呼吸衰竭"],
            ["每年咳嗽咳痰3月以上，已20年", "FEV1/FVC 56%", "PaO2 62mmHg，PaCO2 48mmHg"],
        ),
    },
    "停经45天": {  # five diseases: more than the format filter's max_items, in every version
        version: (["异位妊娠", "先兆流产", "黄体破裂", "盆腔炎", "卵巢囊肿"], ["停经45天，阴道流血"])
        for version in ("v1", "v2", "v3")
    },
    "腰痛伴右下腹绞痛": {
        "v1": (["肾结石"], ["腰痛"]),
        "v2": (["右输尿管结石"], ["右侧腰部绞痛向会阴放射", "尿红细胞25/HP"]),
        "v3": (
            ["右输尿管结石", "右肾积水"],
            ["右侧腰部绞痛向会阴放射", "尿红细胞25/HP", "超声示右输尿管上段结石"],
        ),
    },
    "双膝关节疼痛3年": {
        "v1": (["骨关节炎"], ["膝痛"]),
        "v2": (["膝骨关节炎"], ["上下楼梯时膝痛", "骨摩擦感"]),
        "v3": (["双膝骨关节炎"], ["上下楼梯时膝痛，晨僵约10分钟", "骨摩擦感", "X线示关节间隙变窄"]),
    },
    "转移性右下腹痛": {
        "v1": (["阑尾炎"], ["转移性右下腹痛"]),
        "v2": (["急性阑尾炎"], ["转移性右下腹痛", "麦氏点压痛、反跳痛"]),
        "v3": (["急性阑尾炎"], ["转移性右下腹痛12小时", "麦氏点压痛、反跳痛阳性", "超声示阑尾增粗0.9cm"]),
    },
    "头晕、乏力2月": {
        "v1": (["贫血"], ["头晕乏力"]),
        "v2": (["巨幼细胞贫血"], ["Hb 78g/L，MCV 112fl", "维生素B12降低"]),
        "v3": (
            ["巨幼细胞贫血", "胃大部切除术后"],
            ["Hb 78g/L，MCV 112fl", "维生素B12降低", "胃大部切除术后10年"],
        ),
    },
    "上腹痛、反酸2年": {
        "v1": (["消化性溃疡"], ["上腹痛"]),
        "v2": (["十二指肠球部溃疡伴出血"], ["空腹上腹痛", "黑便", "胃镜见球部溃疡"]),
        "v3": (
            ["十二指肠球部溃疡伴出血"],
            ["空腹上腹烧灼痛，进食缓解", "柏油样便2次", "胃镜：十二指肠球部溃疡"],
        ),
    },
}
UNPARSEABLE = {"v2": "双膝关节疼痛3年"}  # v2 answers this case with prose: rejected by the parser
FAILING = {"v1": "头晕、乏力2月"}  # v1's request for this case gets HTTP 400: a failed record
VERSIONS = {
    "v1": ("zero-shot, short answers", "qwen2.5-7b", 1765, "zero_shot"),
    "v2": ("few-shot, more diseases", "qwen2.5-72b", 1799, "few_shot"),
    "v3": ("two-stage, longer evidence", "deepseek-v3", 1914, "两阶段（疾病->诊断依据）"),
}


def _answerer(version: str) -> Any:
    def answer(body: dict[str, Any]) -> str:
        prompt = last_user_text(body)
        if version in UNPARSEABLE and UNPARSEABLE[version] in prompt:
            return "根据病史，考虑关节退行性改变，建议进一步检查。"
        for complaint, versions in ANSWERS.items():
            if complaint in prompt:
                diseases, reason = versions[version]
                return json.dumps({"reason": reason, "diseases": diseases}, ensure_ascii=False)
        return json.dumps({"reason": ["依据不足"], "diseases": ["待查"]}, ensure_ascii=False)

    return answer


def build(root: Path, server: FakeServer) -> Path:
    """Runs v1, v2, v3 under root/<version>/ with notes (score, text); returns root."""
    for version, (description, model, score, text) in VERSIONS.items():
        folder = root / version
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(CASES, folder / "cases.jsonl")
        (folder / "spec.toml").write_text(
            SPEC.format(name=version, description=description, url=server.url, model=model), encoding="utf-8"
        )
        server.set(
            answer=_answerer(version),
            models=None,
            fail_when={FAILING[version]: 400} if version in FAILING else {},
        )
        proc = engine("run", folder / "spec.toml", "--quiet", check=False)
        assert proc.returncode == (3 if version in FAILING else 0), proc.stderr  # 3: some items failed
        history.note(root, version, score, text)  # what `engine runs note` records
    return root


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "view-fixture")
    with FakeServer() as fake:
        print(build(target, fake))


class ViewerThread:
    """`engine view`'s app on a free 127.0.0.1 port in a background thread (tests and screenshots)."""

    def __init__(self, root: Path):
        self.root = root
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ViewerThread:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="engine-view")
        self._thread.start()
        if not ready.wait(20):
            raise RuntimeError("the viewer did not start within 20 s")
        return self

    def _run(self, ready: threading.Event) -> None:
        from aiohttp import web

        from viewer.server import make_app

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(make_app(self.root), access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", 0).start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
