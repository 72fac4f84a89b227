"""An objective scored by lm-eval on the candidate model in memory.

`lm_eval.simple_evaluate` runs on an `HFLM` that wraps the live target model and its tokenizer: no disk round
trip per candidate. Its response cache stays off (it is keyed by prompt, so it would hand one candidate's
answers to the next) and so does bootstrapping (no standard errors are needed to rank candidates). The search
split and the held-out split are either two lm-eval tasks, or one task (`task` alone) whose evaluation
documents are split by a seeded hash of each document's content (`held_out_fraction`, `split_seed`); either
way the two splits are checked disjoint by content hash (unless one task is named as both, knowingly). Each
split is scored through lm-eval's `samples`: the indices of its documents, or a seeded subsample of `limit` of
them (lm-eval's own `limit` takes the first N).
The spec's `chat_template`, `system_prompt` and `num_fewshot` become lm-eval's `apply_chat_template` (with the
shots as prior turns, `fewshot_as_multiturn`), `system_instruction` and `num_fewshot`, its shots drawn with
`sample_seed`; the search task's shots are checked to share no document with the held-out task.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evomerge.errors import UsageError
from evomerge.evaluate.data import FORMATS, template_fields
from evomerge.evaluate.prompts import check_chat_template
from evomerge.evaluate.specs import ChoiceSpec, GenerateSpec, LmEvalSpec
from evomerge.extras import require

SPLITS = ("search", "held_out")


class LmEvalTask:
    def __init__(self, name: str, spec: LmEvalSpec) -> None:
        require("lm_eval", "lm-eval", f"task '{name}' (kind lm_eval)")
        from lm_eval.tasks import TaskManager

        if spec.include_path is not None and not spec.include_path.is_dir():
            raise UsageError(f"task '{name}': include_path '{spec.include_path}' is not a directory")
        self.name = name
        self.spec = spec
        self.manager = TaskManager(include_path=str(spec.include_path) if spec.include_path else None)
        self.task_names = {"search": spec.task, "held_out": spec.held_out_task or spec.task}
        search_task = self._load(spec.task)
        held_out_task = self.task_names["held_out"]
        self.tasks = {
            "search": search_task,
            "held_out": search_task if held_out_task == spec.task else self._load(held_out_task),
        }
        docs = {split: list(task.eval_docs) for split, task in self.tasks.items()}
        #: each split's documents, as indices into its task's evaluation documents
        self.indices = {split: list(range(len(split_docs))) for split, split_docs in docs.items()}
        if spec.held_out_task is None:
            self.indices = self._hash_split(docs["search"])
        self.docs = {split: [docs[split][i] for i in self.indices[split]] for split in SPLITS}
        if spec.held_out_task != spec.task:  # one task named twice is no held-out split, knowingly
            _check_disjoint(name, self.docs["search"], self.docs["held_out"], "in the search split")
            if spec.num_fewshot:
                shots = self.tasks["search"].fewshot_docs()
                if shots is None:
                    raise UsageError(
                        f"task '{name}': lm-eval task '{spec.task}' has no fewshot split, so its k-shot "
                        "examples would be drawn from the documents it scores; set num_fewshot: 0 or name "
                        "a task that has one"
                    )
                _check_disjoint(
                    name, list(shots), self.docs["held_out"], "among the search task's k-shot documents"
                )
        higher = self.tasks["search"].higher_is_better()
        filters = [f.name for f in getattr(self.tasks["search"], "_filters", [])] or ["none"]
        self.metrics = {_metric_name(m, f): higher.get(m, True) for m in higher for f in filters}
        self.samples = {split: self._sample(split) for split in SPLITS}
        self.model_wrapper = None

    def _load(self, task_name: str) -> Any:
        if task_name not in self.manager.all_tasks:
            close = difflib.get_close_matches(task_name, self.manager.all_tasks, n=1)
            hint = (
                f"; did you mean '{close[0]}'?"
                if close
                else " (is include_path set to its YAML's directory?)"
            )
            raise UsageError(f"task '{self.name}': lm-eval has no task '{task_name}'{hint}")
        try:
            return self.manager.load(task_name)["tasks"][task_name]
        except Exception as error:  # lm-eval raises many types for a broken task YAML or its data
            raise UsageError(f"task '{self.name}': lm-eval cannot load task '{task_name}': {error}") from None

    def _hash_split(self, docs: list[dict]) -> dict[str, list[int]]:
        """The indices of the documents searched and held out: a document is held out when the hash of the
        split seed and its content falls under held_out_fraction, so equal documents share a split and the
        split does not depend on the documents' order."""
        spec = self.spec
        held_out = [
            int(hashlib.sha256(f"{spec.split_seed}/{_digest(doc)}".encode()).hexdigest()[:12], 16) / 16**12
            < spec.held_out_fraction
            for doc in docs
        ]
        indices = {
            "search": [i for i, out in enumerate(held_out) if not out],
            "held_out": [i for i, out in enumerate(held_out) if out],
        }
        if not indices["search"] or not indices["held_out"]:
            raise UsageError(
                f"task '{self.name}': lm-eval task '{spec.task}' has {len(docs)} documents, too few to split "
                f"into search and held-out at held_out_fraction {spec.held_out_fraction:g}; name a "
                "held_out_task or use a larger task"
            )
        return indices

    def _sample(self, split: str) -> list[int]:
        """The indices (into the split's task's documents) that the split scores: all of them, or a seeded
        subsample of `limit`."""
        indices = self.indices[split]
        if not indices:
            raise UsageError(f"task '{self.name}': lm-eval task '{self.task_names[split]}' has no documents")
        if self.spec.limit is None:
            return indices
        if len(indices) < self.spec.limit:
            raise UsageError(
                f"task '{self.name}': the {split} split has {len(indices)} documents, "
                f"fewer than limit {self.spec.limit}"
            )
        return sorted(random.Random(self.spec.sample_seed).sample(indices, self.spec.limit))

    def size(self, split: str) -> int:
        return len(self.samples[split])

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> None:
        check_chat_template(self.name, self.spec, tokenizer)
        self.tokenizer = tokenizer

    def score(self, model: PreTrainedModel, split: str) -> dict[str, float]:
        """The task's metrics on one split, for the model as it is now."""
        import lm_eval

        task_name = self.task_names[split]
        # lm-eval draws progress bars per request type on every call; the search has its own bar.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
            results = self._evaluate(lm_eval, model, task_name, split)
        return {
            _metric_name(*key.split(",", 1)): float(value)
            for key, value in results.items()
            if "," in key and "_stderr" not in key
        }

    def _evaluate(self, lm_eval, model: PreTrainedModel, task_name: str, split: str) -> dict[str, Any]:
        return lm_eval.simple_evaluate(
            model=self._wrapper(model),
            tasks=[task_name],
            task_manager=self.manager,
            samples={task_name: self.samples[split]},
            use_cache=None,
            cache_requests=False,
            bootstrap_iters=0,
            log_samples=False,
            verbosity="ERROR",
            apply_chat_template=self.spec.chat_template,
            fewshot_as_multiturn=self.spec.chat_template,
            system_instruction=self.spec.system_prompt,
            num_fewshot=self.spec.num_fewshot or None,
            fewshot_random_seed=self.spec.sample_seed,
        )["results"][task_name]

    def _wrapper(self, model: PreTrainedModel):
        """One HFLM around the target model (the same object is rewritten in place for every candidate)."""
        from lm_eval.models.huggingface import HFLM

        if self.model_wrapper is None or self.model_wrapper.model is not model:
            adds_bos = self.tokenizer("a")["input_ids"][:1] == [self.tokenizer.bos_token_id]
            self.model_wrapper = HFLM(
                pretrained=model,
                tokenizer=self.tokenizer,
                batch_size=self.spec.batch_size,
                add_bos_token=adds_bos,
            )
        return self.model_wrapper


def _metric_name(metric: str, filter_name: str) -> str:
    """`exact_match` for lm-eval's `exact_match,none`; `exact_match,strict-match` keeps its filter."""
    return metric if filter_name == "none" else f"{metric},{filter_name}"


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _check_disjoint(name: str, docs: list[dict], held_out: list[dict], where: str) -> None:
    """Refuse a held-out task that shares a document with `docs`: the search task's documents, or the ones
    its k-shot examples are drawn from (`where` they were found, in the message)."""

    seen = {_digest(doc) for doc in docs}
    shared = sum(_digest(doc) in seen for doc in held_out)
    if shared:
        raise UsageError(
            f"task '{name}': {shared} documents of the held-out lm-eval task are also {where}; "
            "the held-out split must be disjoint"
        )


def lm_eval_task_config(task_name: str, data_file: Path, spec: GenerateSpec | ChoiceSpec) -> dict[str, Any]:
    """The lm-eval task YAML (as a dict) that scores one data file the way a built-in task spec does: to run
    the same task through both scorers (the parity test, `experiments/bench_eval.py`) or move a task to
    lm-eval. Answer extraction has no one-line lm-eval equivalent and is refused, and so are k-shot examples
    (lm-eval draws its own for each document); chat_template and system_prompt are settings of the lm_eval
    task spec, not of its YAML."""
    if spec.num_fewshot:
        raise ValueError("k-shot examples: lm-eval draws its own for each document (num_fewshot of lm_eval)")
    prompt = spec.template
    for field in template_fields(spec.template):
        prompt = prompt.replace("{" + field + "}", "{{" + field + "}}")
    config: dict[str, Any] = {
        "task": task_name,
        "dataset_path": FORMATS[data_file.suffix],
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": prompt,
    }
    if isinstance(spec, ChoiceSpec):
        choices = spec.choices if spec.choices is not None else list(spec.options)
        return {
            **config,
            "output_type": "multiple_choice",
            "doc_to_choice": choices,
            "doc_to_target": spec.target,
            "target_delimiter": spec.delimiter,
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }
    if spec.extract is not None or spec.match != "exact":
        raise ValueError("answer extraction and numeric matching have no lm-eval equivalent here")
    if spec.max_new_tokens is None:
        raise ValueError("set max_new_tokens: lm-eval's default (256) is not the built-in scorer's")
    generation = {"until": list(spec.stop), "do_sample": False, "max_gen_toks": spec.max_new_tokens}
    return {
        **config,
        "output_type": "generate_until",
        "doc_to_target": "{{" + spec.target + "}}",
        "generation_kwargs": generation,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
