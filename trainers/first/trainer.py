"""FIRST training: a thin SFTTrainer subclass whose loss is the calibrated top-k KL (loss.py), fed by
FirstCollator, with LoRA through peft and distribution through `accelerate launch` as in SFT."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer

from engine.errors import SpecError
from engine.store import numbered_jsonl
from engine.topk_store import TopKReader, check_compatible
from trainers.first.calibrate import resolve_c
from trainers.first.collator import FirstCollator
from trainers.first.head import HeadTransform, student_scores
from trainers.first.loss import first_token_loss

log = logging.getLogger(__name__)
MIN_ALIGNED = 0.5  # below this share of completion tokens with a teacher row, the store does not fit


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class FirstConfig:
    """Everything `python -m engine train first` needs; `sft` takes any trl.SFTConfig field."""

    model: str  # base (student) model: a transformers folder or hub id available offline
    store: str  # top-k store written by the teacher (engine/topk_store.py)
    records: str  # JSONL of {key, prompt, completion}: the same records the store was scored on
    output_dir: str
    tokenizer: str | None = None  # student tokenizer, when not the model's own
    key_field: str = "key"
    c: float | str | None = "manifest"  # "manifest": the calibrated c; None / "none": no transform
    k: int | None = None  # use the best k stored entries (None: all)
    tail_bucket: bool = False  # a (k+1)-th bucket for the mass outside the top-k
    ce_weight: float = 0.0  # + ce_weight * cross-entropy on the distilled tokens
    student_temperature: float = 1.0
    logit_chunk_tokens: int | None = None  # positions per LM-head chunk (None: 2^25 // vocab)
    lora: LoraSettings | None = field(default_factory=LoraSettings)  # None: full fine-tuning
    sft: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FirstLoss:
    c: float | None
    tail_bucket: bool = False
    ce_weight: float = 0.0
    student_temperature: float = 1.0
    chunk_tokens: int | None = None


class FirstTrainer(SFTTrainer):
    """SFTTrainer with the FIRST loss; the batch carries teacher_ids / teacher_logprobs [B, L, k]."""

    def __init__(self, *args: Any, first_loss: FirstLoss, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.first_loss = first_loss
        self._head_checked = False

    def _check_head(self, outputs: Any, head_module: torch.nn.Module, head: HeadTransform) -> None:
        plain = HeadTransform(1.0, head.logit_scale, head.softcap)
        with torch.no_grad(), self.accelerator.autocast():
            last = outputs.hidden_states[-1][:, -1]
            ours = plain(torch.nn.functional.linear(last, head_module.weight, head_module.bias))
            theirs = outputs.logits[:, -1].float()
        # a scaling convention shows as a factor or a squashing, far beyond bf16 rounding (~0.4%)
        if (ours - theirs).abs().max() > 0.02 * theirs.abs().max() + 0.05:
            raise SpecError(
                f"{type(self.model).__name__}: its logits are not lm_head(hidden) with logit_scale and "
                "soft-capping as FIRST computes them (unsupported output scaling); use SFT for this model"
            )
        self._head_checked = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg, mode = self.first_loss, "train" if self.model.training else "eval"
        labels, t_ids, t_lps = inputs["labels"], inputs["teacher_ids"], inputs["teacher_logprobs"]
        # without labels, and with the logits of one position only: the loss needs the hidden states
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            output_hidden_states=True,
            logits_to_keep=1,
            use_cache=False,
        )
        mask = labels[:, 1:] != -100  # output p predicts token p + 1
        hidden = outputs.hidden_states[-1][:, :-1][mask]
        unwrapped = self.accelerator.unwrap_model(model)
        head_module = unwrapped.get_output_embeddings()
        text_config = unwrapped.config.get_text_config()
        head = HeadTransform(
            cfg.student_temperature,
            getattr(text_config, "logit_scale", None) or 1.0,
            getattr(text_config, "final_logit_softcapping", None),
        )
        if not self._head_checked:  # the one logit the model computed must match ours (scaling conventions)
            self._check_head(outputs, head_module, head)
        ids, lps = t_ids[:, :-1][mask], t_lps[:, :-1][mask]
        gold = labels[:, 1:][mask] if cfg.ce_weight else None
        weight, bias, valid = head_module.weight, head_module.bias, torch.isfinite(lps)
        with self.accelerator.autocast():  # the LM head at the precision the model's own forward uses
            scores = student_scores(
                hidden, weight, bias, ids, valid, gold, head, cfg.tail_bucket, cfg.chunk_tokens
            )
        kl, ce = first_token_loss(scores, lps, cfg.c, cfg.tail_bucket)
        per_token = kl if ce is None else kl + cfg.ce_weight * ce
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        n = max(int(mask.sum()), 1)
        self._metrics[mode]["first_kl"].append(kl.detach().sum().item() / n)
        if ce is not None:
            self._metrics[mode]["first_ce"].append(ce.detach().sum().item() / n)
        return (loss, outputs) if return_outputs else loss


def load_records(path: str, key_field: str, reader: TopKReader) -> list[dict]:
    """The prompt/completion records to distil on; each must have its key in the store."""
    records = []
    for line_no, record in numbered_jsonl(path):
        missing = [f for f in (key_field, "prompt", "completion") if f not in record]
        if missing:
            raise SpecError(f"{path}:{line_no}: missing field(s) {missing}")
        if record[key_field] not in reader:
            raise SpecError(
                f"{path}:{line_no}: {key_field}={record[key_field]!r}: no teacher top-k in {reader.dir}"
            )
        records.append(
            {key_field: record[key_field], "prompt": record["prompt"], "completion": record["completion"]}
        )
    if not records:
        raise SpecError(f"{path}: no records")
    return records


def build_first_trainer(config: FirstConfig) -> FirstTrainer:
    """The configured trainer, not yet trained (the benchmark times its steps)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader = TopKReader(config.store)
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
    check_compatible(reader.vocab_hash, tokenizer)
    loss = FirstLoss(
        resolve_c(config.c, reader.manifest, config.tail_bucket, config.store),
        config.tail_bucket,
        config.ce_weight,
        config.student_temperature,
        config.logit_chunk_tokens,
    )
    if config.sft.get("packing") or config.sft.get("padding_free"):
        raise SpecError("sft.packing / sft.padding_free: FIRST aligns teacher rows per example; set false")
    if config.k is not None and not 0 < config.k <= reader.k:
        raise SpecError(f"k: the store holds the top {reader.k}; asked for {config.k}")
    dataset = Dataset.from_list(load_records(config.records, config.key_field, reader))
    model = AutoModelForCausalLM.from_pretrained(config.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    collator = FirstCollator(
        reader,
        tokenizer.pad_token_id,
        k=config.k,
        vocab_size=model.get_output_embeddings().weight.shape[0],
        key_field=config.key_field,
    )
    sft = {"report_to": "none", **config.sft, "remove_unused_columns": False}  # keep the key column
    lora = config.lora
    peft_config = (
        None
        if lora is None
        else LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
    )
    return FirstTrainer(
        model=model,
        args=SFTConfig(output_dir=config.output_dir, **sft),
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
        peft_config=peft_config,
        first_loss=loss,
    )


def alignment_report(trainer: FirstTrainer) -> dict[str, float]:
    """Share of completion tokens that get a teacher row, over the prepared training set."""
    collator: FirstCollator = trainer.data_collator
    distilled = completion = 0
    for example in trainer.train_dataset:
        a = collator.align(example)
        distilled, completion = distilled + a.distilled, completion + a.completion
    collator.distilled = collator.completion = 0
    share = distilled / max(completion, 1)
    return {"distilled_tokens": distilled, "completion_tokens": completion, "distilled_share": share}


def train_first(config: FirstConfig) -> FirstTrainer:
    """Build, check the store fits the records, train, save the model/adapter and first_summary.json."""
    trainer = build_first_trainer(config)
    report = alignment_report(trainer)
    if report["distilled_share"] < MIN_ALIGNED:
        raise SpecError(
            f"{config.store}: only {report['distilled_share']:.0%} of the completion tokens of "
            f"{config.records} match the stored teacher tokens; score these records (same tokenizer and "
            "chat template) first"
        )
    if report["distilled_share"] < 1:
        log.warning(
            "%s: %.1f%% of completion tokens have no teacher row",
            config.store,
            100 - 100 * report["distilled_share"],
        )
    result = trainer.train()
    trainer.save_model(config.output_dir)
    summary = {
        "config": asdict(config),
        "c": trainer.first_loss.c,
        "alignment": report,
        "train": result.metrics,
        "store_manifest": trainer.data_collator.reader.manifest,
    }
    if trainer.is_world_process_zero():
        Path(config.output_dir, "first_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return trainer
