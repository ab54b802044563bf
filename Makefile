# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv and install first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-extra.txt | cksum | cut -d' ' -f1)

.PHONY: install system-deps demo demo-first test lint bench clean

# Debian packages the tests need (CI runs as root on Debian). Installed only when missing; elsewhere the
# tests that need them skip and say why.
APT_PACKAGES := redis-server chromium chromium-driver fonts-wqy-microhei

install: $(STAMP)

$(STAMP): pyproject.toml requirements-extra.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch lies on disk; a bare `torch` would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# packages whose own dependencies we must not pull (see requirements-extra.txt)
	$(PY) -m pip install -q --no-deps -r requirements-extra.txt
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(PY) -m engine run runs/demo/spec.toml
	$(PY) -m engine status runs/demo/spec.toml
	$(PY) -m engine export runs/demo/spec.toml --stage label_reasons --format sft -o runs/demo/out/sft.jsonl
	$(PY) -m engine export runs/demo/spec.toml --stage label_reasons --format submission -o runs/demo/out/submission.jsonl
	$(PY) -m engine train sft runs/demo/train.toml
	$(PY) -m engine run runs/demo/student.toml
	$(PY) -m engine eval runs/demo/student.toml:predict --gold runs/demo/test_gold.jsonl

# FIRST's loop on the same records (docs/first.md): the demo's SFT student is the teacher, so `make demo`
# runs first when its adapter is missing. Rows to capture (the train spec renders them), the teacher's
# top-5, calibration, FIRST training, the student asked in its training format, scored, beside the SFT run.
demo-first: install
	test -f runs/demo/out/train/sft/adapter_model.safetensors || $(MAKE) demo
	$(PY) -m engine train first runs/demo-first/train.toml --dump-examples runs/demo-first/out/rows.jsonl
	$(PY) -m engine run runs/demo-first/capture.toml
	$(PY) -m engine distill calibrate runs/demo-first/out/capture/teacher_topk/topk --val-fraction 1
	$(PY) -m engine train first runs/demo-first/train.toml
	$(PY) -m engine run runs/demo-first/student.toml
	$(PY) -m engine eval runs/demo-first/student.toml:predict --gold runs/demo/test_gold.jsonl
	$(PY) -m engine runs

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
			|| echo "apt-get could not install $$missing: the tests that need them will skip"; \
	else echo "not root or no apt-get: $$missing not installed; the tests that need them will skip"; fi

# llama.cpp's server, the tests' third-party OpenAI-compatible endpoint, built from source once per venv.
# Portable (GGML_NATIVE=OFF): the native build crashed on its first completion on CI's AVX-512 machines.
# Without pip's cache: its wheel cache cannot tell a native build from a portable one. No llava (unused);
# -O1: the test asks for a dozen tokens, so compiling is the cost (-O1 takes a quarter less CPU than -O3).
LLAMA := $(VENV)/.llama-cpp-python-0.3.36-portable-O1
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS_RELEASE=-O1 -DCMAKE_CXX_FLAGS_RELEASE=-O1

$(LLAMA): | $(STAMP)
	@echo "building llama-cpp-python 0.3.36 (a few minutes on 2 cores)"
	@if CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install -q --no-cache-dir --force-reinstall \
			--no-deps "llama-cpp-python==0.3.36" && $(PY) -m pip install -q "llama-cpp-python[server]==0.3.36"; \
	then touch $@; else echo "llama-cpp-python did not build: its test will skip"; fi

test: install system-deps $(LLAMA)
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs/*/out runs/*/out-* runs/*/cache
