"""FIRST training, in TRL's shape: `FirstConfig` (SFTConfig plus FIRST's keys: the `[first]` table of a
train spec) and `FirstTrainer`, a thin SFTTrainer subclass whose loss is the calibrated top-k KL
(loss.py), fed by FirstCollator. `train_first(spec)` runs it through the path every method shares
(trainers/fit.py): test-set guard, resume, checkpoint scores, summary.json and loss.png.

Held-out evaluation adds, per checkpoint, the KL to the (calibrated) teacher, the student's top-1
agreement with the teacher, its top-1 accuracy on the gold token and its expected calibration error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from engine.errors import SpecError
from trainers.checkpoints import load_hook
from trainers.data import drop_format, format_keys_given, save_format, split_validation, train_records
from trainers.first.calibrate import resolve_c
from trainers.first.collator import FirstCollator
from trainers.first.head import HeadTransform, student_scores, student_top1
from trainers.first.loss import first_token_loss
from trainers.first.metrics import NextTokenStats
from trainers.first.tokens import tokenise_records
from trainers.first.topk_store import TopKReader, check_compatible
from trainers.fit import fit, trl_config
from trainers.guard import check_test_overlap
from trainers.modeling import base_folder, load_for_training, load_tokenizer
from trainers.spec import TrainSpec

if TYPE_CHECKING:
    from generators.medical.format import PromptFormat

log = logging.getLogger(__name__)
MIN_ALIGNED = 0.5  # below this share of completion tokens with a teacher row, the store does not fit


@dataclass
class FirstConfig(SFTConfig):
    """The `[first]` table: these keys plus any field of TRL's SFTConfig (as TRL's GKDConfig extends it)."""

    output_dir: str = field(
        default="out/first", metadata={"help": "the adapter (or model), checkpoints, summary", "path": True}
    )
    init_adapter: str = field(default="", metadata={"help": "continue from this adapter", "path": True})
    store: str = field(
        default="", metadata={"help": "the teacher's top-k store (a folder); required", "path": True}
    )
    key_field: str = field(default="key", metadata={"help": "the record field holding the store key"})
    c: float | str | None = field(
        default="manifest",
        metadata={"help": "'manifest': the store's calibrated c; a number; 'none': no transform"},
    )
    k: int | None = field(default=None, metadata={"help": "use the best k stored entries (default: all)"})
    tail_bucket: bool = field(
        default=False, metadata={"help": "a (k+1)-th bucket for the mass outside the top-k"}
    )
    ce_weight: float = field(default=0.0, metadata={"help": "+ ce_weight x cross-entropy on the gold token"})
    logit_chunk_tokens: int | None = field(
        default=None, metadata={"help": "positions per LM-head chunk (default: 2^25 // vocab)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.packing or self.padding_free:
            raise ValueError("packing / padding_free: FIRST aligns teacher rows per example; set them false")
        if self.k is not None and self.k <= 0:
            raise ValueError(f"k must be > 0, got {self.k}")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, got {self.ce_weight}")
        self.remove_unused_columns = False  # the collator needs the record key column


@dataclass(frozen=True)
class FirstLoss:
    c: float | None
    tail_bucket: bool = False
    ce_weight: float = 0.0
    chunk_tokens: int | None = None


Fail = Callable[[str, str], Exception]


def _plain_fail(key: str, message: str) -> Exception:
    return SpecError(f"first.{key}: {message}")


def open_store(
    args: FirstConfig, tokenizer: Any, fail: Fail = _plain_fail
) -> tuple[TopKReader, float | None]:
    """The store and the c to train with, after checking the store fits the student and the config."""
    if not args.store:
        raise fail("store", "required: the teacher's top-k store (a folder; see docs/first.md)")
    reader = TopKReader(args.store)
    check_compatible(reader.vocab_hash, tokenizer)
    if args.k is not None and args.k > reader.k:
        raise fail("k", f"the store holds the top {reader.k}; asked for {args.k}")
    return reader, resolve_c(args.c, reader.manifest, args.tail_bucket, args.store)


class FirstTrainer(SFTTrainer):
    """SFTTrainer with the FIRST loss; builds its FirstCollator from `args.store` (the batch then carries
    teacher_ids / teacher_logprobs [B, L, k])."""

    def __init__(self, model: Any, args: FirstConfig, *, processing_class: Any, **kwargs: Any):
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        reader, c = open_store(args, processing_class)
        head = model.get_output_embeddings().weight
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = FirstCollator(
                reader,
                processing_class.pad_token_id,
                k=args.k,
                vocab_size=getattr(head, "ds_shape", head.shape)[0],  # ZeRO-3 holds a shard: its full shape
                key_field=args.key_field,
            )
        super().__init__(model, args=args, processing_class=processing_class, **kwargs)
        if self.is_fsdp_enabled:  # its LM head is a DTensor shard outside the forward; see _head_params
            raise SpecError(
                "FIRST reads the LM head outside the model's forward, which FSDP shards: launch with "
                "configs/accelerate/multi_gpu.yaml or a DeepSpeed config"
            )
        self.first_loss = FirstLoss(c, args.tail_bucket, args.ce_weight, args.logit_chunk_tokens)
        self._head_checked = False
        self._gathered_head: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._eval_stats: NextTokenStats | None = None

    def _head_params(self, head_module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head's weight and bias, whole. Under DeepSpeed ZeRO-3 a process holds only a shard of
        them outside the module's own forward: a frozen head (LoRA) is gathered once and a copy kept, which
        also outlives the gather for backward. A trainable one (full fine-tuning) is refused there."""
        weight, bias = head_module.weight, head_module.bias
        if not hasattr(weight, "ds_id"):  # not partitioned by ZeRO-3
            return weight, bias
        if weight.requires_grad:
            raise SpecError(
                "FIRST under DeepSpeed ZeRO-3 needs a frozen LM head (LoRA); for full fine-tuning use "
                "configs/accelerate/deepspeed_zero2.yaml or multi_gpu.yaml"
            )
        if self._gathered_head is None:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for p in (weight, bias) if p is not None]):
                copy = (weight.detach().clone(), None if bias is None else bias.detach().clone())
            self._gathered_head = copy
        return self._gathered_head

    def _check_head(
        self, outputs: Any, weight: torch.Tensor, bias: torch.Tensor | None, head: HeadTransform
    ) -> None:
        with torch.no_grad(), self.accelerator.autocast():
            last = outputs.hidden_states[-1][:, -1]
            ours = head(torch.nn.functional.linear(last, weight, bias))
            theirs = outputs.logits[:, -1].float()
        # a scaling convention shows as a factor or a squashing, far beyond bf16 rounding (~0.4%)
        if (ours - theirs).abs().max() > 0.02 * theirs.abs().max() + 0.05:
            raise SpecError(
                f"{type(self.model).__name__}: its logits are not lm_head(hidden) with logit_scale and "
                "soft-capping as FIRST computes them (unsupported output scaling); use SFT for this model"
            )
        self._head_checked = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg, training = self.first_loss, self.model.training
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
            getattr(text_config, "logit_scale", None) or 1.0,
            getattr(text_config, "final_logit_softcapping", None),
        )
        weight, bias = self._head_params(head_module)
        if not self._head_checked:  # the one logit the model computed must match ours (scaling conventions)
            self._check_head(outputs, weight, bias, head)
        ids, lps = t_ids[:, :-1][mask], t_lps[:, :-1][mask]
        gold = labels[:, 1:][mask]
        valid = torch.isfinite(lps)
        with self.accelerator.autocast():  # the LM head at the precision the model's own forward uses
            scores = student_scores(
                hidden, weight, bias, ids, valid, gold if cfg.ce_weight else None, head, cfg.tail_bucket,
                cfg.chunk_tokens,
            )  # fmt: skip
        kl, ce = first_token_loss(scores, lps, cfg.c, cfg.tail_bucket)
        per_token = kl if ce is None else kl + cfg.ce_weight * ce
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        if training:
            n = max(int(mask.sum()), 1)
            self._metrics["train"]["first_kl"].append(kl.detach().sum().item() / n)
            if ce is not None:
                self._metrics["train"]["first_ce"].append(ce.detach().sum().item() / n)
            # input tokens seen, over every process, as SFTTrainer counts them (summary.json's tokens)
            attention = inputs.get("attention_mask")
            local = attention.sum() if attention is not None else torch.tensor(inputs["input_ids"].numel())
            seen = self.accelerator.gather_for_metrics(local.to(self.accelerator.device)).sum().item()
            self._total_train_tokens += seen // getattr(self, "_tp_size", 1)
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        elif self._eval_stats is not None:
            with torch.no_grad(), self.accelerator.autocast():
                top1, confidence = student_top1(hidden, weight, bias, head, cfg.chunk_tokens)
            teacher_top1 = ids.gather(1, lps.argmax(-1, keepdim=True))[:, 0]
            self._eval_stats.add(kl.detach(), top1, confidence, teacher_top1, gold)
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """The held-out next-token metrics, summed over every process's tokens, beside eval_loss."""
        self._eval_stats = NextTokenStats()
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            totals = self.accelerator.reduce(self._eval_stats.totals.to(self.accelerator.device), "sum")
        finally:
            self._eval_stats = None
        metrics = NextTokenStats.from_totals(totals.cpu()).metrics()
        output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in metrics.items()})
        return output


def first_records(spec: TrainSpec) -> tuple[list[dict], PromptFormat | None]:
    """data.train's records (cut to max_records) and the prompt format that renders them: labelled task
    records (no `prompt` field) are rendered by `[data]`'s format, as `train sft` renders them, and that
    format is saved beside the output; prompt/completion rows arrive rendered (None), so `[data]`'s
    prompt-format keys cannot apply to them: setting one warns."""
    records = train_records(spec, "list labelled records, or the prompt/completion rows the store holds")
    if records and "prompt" not in records[0]:
        return records, spec.prompt_format()
    if given := format_keys_given(spec):
        log.warning(
            "%s: [data] %s: prompt-format keys do not apply to `train first` when its records are "
            "rendered prompt/completion rows already; ignored",
            spec.path, ", ".join(given),
        )  # fmt: skip
    return records, None


def first_examples(spec: TrainSpec, records: list[dict], fmt: PromptFormat | None, source: str) -> list[dict]:
    """{key, prompt, completion} per record, as the teacher's top-k is captured on: a row as it is, or a
    labelled record rendered by `fmt` (the joint task). One kind per run: a mix is refused."""
    key = spec.first.key_field
    out = []
    for index, record in enumerate(records):
        rid = record.get(key, record.get("id"))
        name = f"record {rid!r}" if rid is not None else f"record #{index + 1} (no id)"
        if key not in record:
            hint = ' (records are keyed by their id: key_field = "id")' if "id" in record else ""
            raise spec.fail(source, f"{name}: no {key!r} field (first.key_field){hint}")
        if ("prompt" in record) != (fmt is None):
            mix = "a prompt/completion row among labelled records" if fmt else "a record without `prompt`"
            raise spec.fail(
                source,
                f"{name} is {mix}; FIRST takes one kind per run: labelled records (rendered by [data]'s "
                "prompt format) or prompt/completion rows (as the store was captured on)",
            )
        if fmt is not None:
            out.append({key: record[key], **fmt.example(record, "joint", source)})
            continue
        missing = [f for f in ("prompt", "completion") if f not in record]
        if missing:
            raise spec.fail(
                source,
                f"{name}: missing field(s) {missing}; FIRST trains on prompt/completion records, the ones "
                "the teacher's top-k was captured on",
            )
        out.append({key: record[key], "prompt": record["prompt"], "completion": record["completion"]})
    return out


def first_dataset(tokenizer: Any, examples: list[dict], key_field: str) -> Dataset:
    """The examples tokenised here, with the function the teacher's capture used (trainers/first/tokens.py),
    so the student trains on exactly the ids the teacher scored; SFTTrainer keeps such rows as they are (it
    only truncates them to max_length). prompt / completion stay for fit's max_length count."""
    rows = tokenise_records(tokenizer, examples, key_field)
    return Dataset.from_list([{**e, **row} for e, row in zip(examples, rows, strict=True)])


def alignment_report(trainer: FirstTrainer) -> dict[str, float]:
    """Share of completion tokens that get a teacher row, over the prepared training set."""
    collator: FirstCollator = trainer.data_collator
    distilled = completion = mismatched = 0
    for example in trainer.train_dataset:
        a = collator.align(example)
        distilled, completion = distilled + a.distilled, completion + a.completion
        mismatched += a.prompt_mismatch
    collator.distilled = collator.completion = collator.prompt_mismatches = 0
    share = distilled / max(completion, 1)
    return {
        "distilled_tokens": distilled,
        "completion_tokens": completion,
        "distilled_share": share,
        "prompt_mismatches": mismatched,  # examples whose prompt ids differ from the teacher's
    }


def train_first(spec: TrainSpec) -> list[dict[str, Any]]:
    """Check records, test set and store before loading the model; train; returns [the summary]."""
    table = spec.first
    load_hook(spec.eval.hook)  # a typo in the hook name should fail now, not after training
    records, fmt = first_records(spec)
    check_test_overlap(spec, records, id_field=table.key_field)
    train, validation = split_validation(spec, records)
    train, validation = (
        first_examples(spec, train, fmt, "data.train"),
        first_examples(spec, validation, fmt, "data.validation"),
    )
    out = Path(table.output_dir)
    tokenizer = load_tokenizer(base_folder(spec))
    args = trl_config(spec, "first", out)
    reader, c = open_store(args, tokenizer, lambda key, message: spec.fail(f"first.{key}", message))
    for source, examples in (("data.train", train), ("data.validation", validation)):
        unscored = [e[table.key_field] for e in examples if e[table.key_field] not in reader]
        if unscored:
            raise spec.fail(
                source,
                f"{len(unscored)} record(s) have no teacher top-k in {reader.dir} (first: "
                f"{table.key_field}={unscored[0]!r}); capture them first",
            )
    init = Path(table.init_adapter) if table.init_adapter else None
    model, peft_config = load_for_training(spec, init, "first.init_adapter")
    trainer = FirstTrainer(
        model,
        args,
        train_dataset=first_dataset(tokenizer, train, table.key_field),
        eval_dataset=first_dataset(tokenizer, validation, table.key_field) if validation else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    # the launch is sound and the records render: the format is saved before the first step (as SFT does)
    if fmt is not None:
        save_format(fmt, out, ["joint"], init)
    else:
        drop_format(out)  # rows that arrived rendered carry no format
    report = alignment_report(trainer)
    if report["distilled_share"] < MIN_ALIGNED:
        raise spec.fail(
            "first.store",
            f"only {report['distilled_share']:.0%} of the completion tokens of data.train match the stored "
            f"teacher tokens ({report['prompt_mismatches']} examples with other prompt ids than the teacher "
            "saw); capture these records (same tokenizer and chat template) first",
        )
    if report["distilled_share"] < 1:
        log.warning(
            "%s: %.1f%% of completion tokens have no teacher row",
            args.store,
            100 - 100 * report["distilled_share"],
        )
    summary = fit(
        trainer,
        out,
        spec,
        validation,
        kind="first",
        given=len(train),
        base_model=str(base_folder(spec)),
        init_adapter=table.init_adapter,
        records={"train": len(train), "validation": len(validation)},
        c=c,
        tail_bucket=args.tail_bucket,
        alignment=report,
        store={"dir": args.store, "k": reader.k, "calibration": reader.manifest.get("calibration")},
    )
    return [summary]
