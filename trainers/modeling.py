"""Loading the base model, tokenizer and LoRA/QLoRA setup a training run starts from, and building a
TRL trainer on them (`build_trl_trainer`, the SFT and DPO methods' one way).

Returns either a plain model plus a LoraConfig (TRL wraps it), or, when the spec continues from an
adapter, a PeftModel loaded trainable (TRL trains it as is; DPO copies it as its reference), or, with
`[lora] enabled = false`, the plain model alone (full fine-tuning).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from trainers.base_model import resolve_base_model
from trainers.fit import trl_config
from trainers.spec import TrainSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lora_config(spec: TrainSpec) -> LoraConfig:
    lora = spec.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def base_folder(spec: TrainSpec) -> Path:
    return resolve_base_model(spec.base_model)  # absolute since the spec loaded; "" = the bundled model


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantization(spec: TrainSpec) -> dict[str, Any]:
    if not spec.lora.qlora:
        return {}
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise spec.fail(
            "lora.qlora", "QLoRA needs a CUDA GPU and `pip install bitsandbytes`; set it to false"
        )
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    # Each accelerate rank keeps its own quantized copy on its own GPU.
    return {"quantization_config": config, "device_map": {"": PartialState().local_process_index}}


def load_for_training(
    spec: TrainSpec, init_adapter: Path | None, key: str = "init_adapter"
) -> tuple[Any, LoraConfig | None]:
    """(model, peft_config): a fresh LoRA config, a trainable PeftModel continuing `init_adapter`, or
    (LoRA disabled) the model alone, every weight trainable."""
    if init_adapter is not None and not (init_adapter / "adapter_config.json").is_file():
        raise spec.fail(
            key,
            f"{str(init_adapter)!r}: no adapter_config.json there; train that adapter first, or fix the path "
            "(relative to the spec)",
        )
    if init_adapter is not None and not spec.lora.enabled:
        raise spec.fail(key, "continues an adapter, but lora.enabled = false; set base_model to a full model")
    folder = base_folder(spec)
    kwargs: dict[str, Any] = {"dtype": DTYPES.get(spec.dtype, "auto"), **_quantization(spec)}
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if not spec.lora.enabled:
        return model, None
    if init_adapter is None:
        return model, lora_config(spec)
    return PeftModel.from_pretrained(model, init_adapter, is_trainable=True), None


def build_trl_trainer(
    trainer_class: type,
    spec: TrainSpec,
    method: str,
    init: Path | None,
    train: list[dict[str, Any]],
    evaluation: list[dict[str, Any]],
    out: Path,
) -> Any:
    """A TRL trainer (SFTTrainer, DPOTrainer) on the spec's model, from `init` (the `<method>.init_adapter`)
    or a fresh LoRA, with the method's config from the spec."""
    # the config first: under DeepSpeed ZeRO-3 it switches on zero.Init, so the model below loads sharded
    args = trl_config(spec, method, out)
    model, peft_config = load_for_training(spec, init, f"{method}.init_adapter")
    return trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(evaluation) if evaluation else None,
        processing_class=load_tokenizer(base_folder(spec)),
        peft_config=peft_config,
    )


def load_adapter(base: str | Path, adapter: str | Path, dtype: str = "auto") -> Any:
    """Base + adapter for inference (eval mode); `base` "" means the bundled model."""
    folder = resolve_base_model(base)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES.get(dtype, "auto"))
    return PeftModel.from_pretrained(model, adapter).eval()
