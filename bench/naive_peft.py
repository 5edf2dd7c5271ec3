"""The naive baseline of the benchmark: plain PEFT + Trainer, the way a placement study is often
scripted by hand — every sequence padded to max_length, the model reloaded for every run, the
Trainer's default random sampler. It trains the same strategies (as PEFT target modules), on
the same examples, for the same steps, and prints each run's eval loss over completion tokens.

Run: python bench/naive_peft.py --targets all:q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj ...
(bench/bench.py calls it; it is not part of the loraplace package.)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from loraplace.data import DataConfig, load_dataset_split
from loraplace.models import _local_path, resolve_model


def encode(tokenizer, example, max_length):
    prompt = tokenizer.apply_chat_template(
        example.prompt, tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + completion_ids)[:max_length]
    pad = max_length - len(ids)
    return {
        "input_ids": ids + [tokenizer.pad_token_id] * pad,
        "attention_mask": [1] * len(ids) + [0] * pad,
        "labels": labels + [-100] * pad,
    }


def collate(features):
    return {k: torch.tensor([f[k] for f in features]) for k in features[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--targets", action="append", required=True, help="NAME:module,module,...[@LAYERS]"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-examples", type=int, default=64)
    parser.add_argument("--eval-examples", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = _local_path(resolve_model("smollm2-135m"))
    train, evaluation, _ = load_dataset_split(
        DataConfig(
            train_examples=args.train_examples,
            eval_examples=args.eval_examples,
            max_length=args.max_length,
        )
    )
    for target in args.targets:
        name, _, spec = target.partition(":")
        modules, _, layers = spec.partition("@")
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32
        )  # reloaded every run
        train_set = [encode(tokenizer, e, args.max_length) for e in train]
        eval_set = [encode(tokenizer, e, args.max_length) for e in evaluation]
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=modules.split(","),
            layers_to_transform=[int(i) for i in layers.split(",")] if layers else None,
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(args.seed)
        model = get_peft_model(model, config)
        training = TrainingArguments(
            output_dir="/tmp/naive-peft",
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=2e-4,
            warmup_steps=2,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=args.seed,
            use_cpu=True,
        )
        trainer = Trainer(
            model=model, args=training, train_dataset=train_set, data_collator=collate
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for i in range(0, len(eval_set), 4):
                batch = collate(eval_set[i : i + 4])
                labels = batch.pop("labels")
                logits = model(**batch).logits[:, :-1].float()
                target_ids = labels[:, 1:]
                total += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)),
                    target_ids.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                ).item()
                count += int((target_ids != -100).sum())
        print(
            f"naive {name}: eval_loss {total / count:.4f} perplexity {math.exp(total / count):.2f} "
            f"wall {time.perf_counter() - start:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
