"""The text backbone family (issue #43): a tiny T5 and its tokenizer written in the hub cache's
layout, loaded offline through the real loader (pinned), its layout (the role of every
parameter), LoRA adapters folded as peft does, merges of fine-tuned experts, and the
reference's generation-based scoring on two GLUE-style tasks."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from cmbench import CmbenchError, pins, registry  # noqa: E402
from cmbench.methods import Context  # noqa: E402
from cmbench.models import layout_of, seq2seq  # noqa: E402

TINY_T5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "feed_forward_proj": "gated-gelu",  # Flan-T5's MLP (wi_0, wi_1, wo)
    "tie_word_embeddings": False,  # Flan-T5's LM head is its own matrix
    "dropout_rate": 0.0,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
SENTENCES = ["a fine film", "a dull film", "great acting", "weak plot", "lovely score", "bad pacing"]
SST2 = [{"sentence": s, "label": int(i % 2 == 0)} for i, s in enumerate(SENTENCES)]
STSB = [
    {"sentence1": a, "sentence2": b, "label": float(x)}
    for a, b, x in [
        ("a cat sat", "a cat sat", 5.0),
        ("a cat sat", "a dog ran", 1.2),
        ("the sun rose", "the sun set", 3.4),
        ("rain fell", "it rained", 4.6),
        ("he ran", "she slept", 0.4),
    ]
]
TASKS = {"sst2": SST2, "stsb": STSB}


def tokenizer(words):
    """A word-level tokenizer with T5's special tokens (<pad> 0, </s> 1, <unk> 2; </s> appended)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def pairs(task):
    return [seq2seq.glue_pair(task, ex) for ex in TASKS[task]]


def in_hub(cache, repo, revision):
    """models--o--r/snapshots/<revision>/ and refs/main, as huggingface_hub's cache holds a repo."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """θ0 and two full experts (sst2, stsb) in a hub cache, plus the tokenizer beside θ0."""
    cache = tmp_path_factory.mktemp("hub")
    words = [w for t in TASKS for p in pairs(t) for w in " ".join(p).split()]
    tok = tokenizer(words)
    theta0 = seq2seq.random_model({**TINY_T5, "vocab_size": len(tok)}, seed=0)
    snap = in_hub(cache, "tester/tiny-t5", "a" * 40)
    theta0.save_pretrained(snap)
    tok.save_pretrained(snap)
    for i, task in enumerate(TASKS):
        torch.manual_seed(i)
        expert = seq2seq.random_model({**TINY_T5, "vocab_size": len(tok)}, seed=0).train()
        prompts, targets = zip(*pairs(task))
        x = tok(list(prompts), padding=True, return_tensors="pt")
        y = tok(list(targets), padding=True, return_tensors="pt")["input_ids"]
        y[y == tok.pad_token_id] = -100
        opt = torch.optim.Adam(expert.parameters(), lr=1e-2)
        for _ in range(200):
            opt.zero_grad()
            expert(input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=y).loss.backward()
            opt.step()
        expert.eval().save_pretrained(in_hub(cache, f"tester/tiny-t5-{task}", f"{i + 1}" * 40))
    return cache


@pytest.fixture
def offline_hub(hub, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CMBENCH_ALLOW_DOWNLOAD", raising=False)
    return hub


def test_layout_gives_every_t5_parameter_its_role(offline_hub):
    model = seq2seq.load_model("tester/tiny-t5")
    layout = layout_of(model)
    state = model.state_dict()
    assert set(layout) == {k for k, v in state.items() if v.is_floating_point()}
    expected = {}
    for name in state:
        leaf = name.rsplit(".", 2)[-2]  # the owning module's attribute name
        if leaf in ("q", "k", "v", "o", "wi_0", "wi_1", "wo", "lm_head"):
            expected[name] = "linear"
        elif leaf in ("shared", "embed_tokens", "relative_attention_bias"):
            expected[name] = "embedding"
        elif leaf in ("layer_norm", "final_layer_norm"):
            expected[name] = "norm"
    assert {k: r.kind for k, r in layout.items()} == expected  # every entry named above, none "other"
    # the token embedding is one tensor under three names: one role
    assert layout["shared.weight"] == layout["encoder.embed_tokens.weight"] == layout["decoder.embed_tokens.weight"]
    assert all(not r.split > 1 for r in layout.values())  # T5 has separate q, k, v


def test_loader_pins_the_weight_file_and_refuses_a_missing_repo_in_one_line(offline_hub):
    with pins.session({}) as found:
        seq2seq.load_model("tester/tiny-t5")
    entry = found["hf://tester/tiny-t5"]
    assert entry["revision"] == "a" * 40 and entry["files"] == ["model.safetensors"]
    with pytest.raises(CmbenchError) as e:
        seq2seq.load_model("tester/absent")
    msg = str(e.value)
    assert "\n" not in msg and "tester/absent" in msg and "--allow-download" in msg


def test_lora_adapter_is_folded_as_peft_merges_it(offline_hub, tmp_path):
    from safetensors.torch import save_file

    base = seq2seq.load_model("tester/tiny-t5").state_dict()
    g = torch.Generator().manual_seed(0)
    factors = {}
    for name in ("encoder.block.0.layer.0.SelfAttention.q", "decoder.block.1.layer.1.EncDecAttention.v"):
        out_f, in_f = base[name + ".weight"].shape
        factors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, in_f, generator=g)
        factors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(out_f, 4, generator=g)
    snap = in_hub(offline_hub, "tester/tiny-t5-lora", "c" * 40)
    (snap / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q", "v"]})
    )
    save_file(factors, str(snap / "adapter_model.safetensors"))
    folded = seq2seq.load_expert("tester/tiny-t5-lora", base)
    changed = {k for k in base if not torch.equal(folded[k], base[k])}
    assert changed == {
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "decoder.block.1.layer.1.EncDecAttention.v.weight",
    }
    for name in changed:
        module = name.removesuffix(".weight")
        a = factors[f"base_model.model.{module}.lora_A.weight"]
        b = factors[f"base_model.model.{module}.lora_B.weight"]
        torch.testing.assert_close(folded[name], base[name] + 2.0 * b @ a, rtol=0, atol=1e-5)
    (snap / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True})
    )
    with pytest.raises(CmbenchError, match="only plain LoRA"):
        seq2seq.load_expert("tester/tiny-t5-lora", base)


def test_experts_merged_and_scored_by_generation(offline_hub):
    tok = seq2seq.load_tokenizer("tester/tiny-t5")
    model = seq2seq.load_model("tester/tiny-t5")
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    experts = {t: seq2seq.load_expert(f"tester/tiny-t5-{t}", theta0) for t in TASKS}

    def scores(state):
        model.load_state_dict(state)
        out = {}
        for t in TASKS:
            prompts, targets = zip(*pairs(t))
            out[t] = seq2seq.score(
                t, seq2seq.generate(model, tok, prompts, batch_size=4), seq2seq.decoded_targets(tok, targets)
            )
        return out

    # each expert answers its own task: exact match 1, Spearman's rho 1 (the tiny model memorises)
    assert scores(experts["sst2"])["sst2"] == 1.0
    assert scores(experts["stsb"])["stsb"] == pytest.approx(1.0)
    assert scores(theta0)["sst2"] < 0.5  # random weights: no label word

    layout = layout_of(model)

    def stream(name, hp):
        method = registry.create(name, hp)
        ctx = Context(theta0=theta0, num_tasks=2, seed=0, generator=torch.Generator().manual_seed(0), layout=layout)
        method.start(ctx)
        merged = theta0
        for step, t in enumerate(TASKS, start=1):
            ctx.step, ctx.task, ctx.seen_tasks = step, t, list(TASKS)[:step]
            merged = method.merge(ctx, merged, experts[t], t)
        return merged

    # OPCM projects matrix by matrix, as the layout says: every linear weight moved off θ0
    opcm = stream("opcm", {"alpha": 0.5})
    assert all(not torch.equal(opcm[k], theta0[k]) for k in theta0 if layout[k].kind == "linear")
    s = scores(opcm)
    assert set(s) == set(TASKS)
    # task arithmetic at λ = 1 is θ0 + both task vectors: the tied embedding moved once per expert
    ta = {k: theta0[k] + sum(experts[t][k] - theta0[k] for t in TASKS) for k in theta0}
    merged = stream("task_arithmetic", {"lam": 1.0})
    for k in ta:
        torch.testing.assert_close(merged[k], ta[k], rtol=0, atol=1e-6)


def test_score_is_the_references():
    assert seq2seq.score("sst2", ["positive", "negative", "neutral"], ["positive", "positive", "neutral"]) == 2 / 3
    # STS-B: Spearman's rho of the numbers, an unparsable answer counting as 0.0
    assert seq2seq.score("stsb", ["1.0", "2.0", "x"], ["1.0", "2.0", "0.5"]) == pytest.approx(1.0)
    assert seq2seq.score("stsb", ["3.0", "1.0", "2.0"], ["1.0", "2.0", "3.0"]) == pytest.approx(-0.5)
    assert seq2seq.glue_pair("stsb", {"sentence1": "a", "sentence2": "b", "label": 3.84})[1] == "3.8"
    assert seq2seq.glue_pair("cola", {"sentence": "x", "label": -1})[1] == ""  # GLUE's unlabelled test rows
    with pytest.raises(CmbenchError):
        seq2seq.score("sst2", ["a"], [])


@pytest.mark.slow
def test_text_suite_runs_offline_through_the_real_path(hub, tmp_path):
    """A text suite end to end in a fresh process, as a user runs it: θ0, its tokenizer and two
    full experts from the hub cache, GLUE's SST-2 and STS-B from the `datasets` cache in their
    hub copy's columns, merged by Task Arithmetic and OPCM through the layout, scored by
    generation (exact match, Spearman's ρ), result files that validate; a data-using method
    is refused in one line."""
    import os
    import subprocess
    import sys

    import yaml

    from cmbench.rehearse.standins import glue_features, hub_dataset_cache
    from cmbench.results import load_results
    from cmbench.suite import load_suite

    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", CMBENCH_DATA_ROOT=str(tmp_path / "data"))
    env.pop("CMBENCH_ALLOW_DOWNLOAD", None)
    os.environ["HF_DATASETS_CACHE"], saved = str(tmp_path / "datasets"), os.environ.get("HF_DATASETS_CACHE")
    try:
        for task, split in (("sst2", "validation"), ("stsb", "validation")):
            rows = [{**ex, "idx": i} for i, ex in enumerate(TASKS[task])]
            hub_dataset_cache("nyu-mll/glue", task, glue_features(task), {"train": rows, split: rows})
    finally:
        if saved is None:
            os.environ.pop("HF_DATASETS_CACHE")
        else:
            os.environ["HF_DATASETS_CACHE"] = saved
    suite = {
        "name": "tiny-text",
        "backbone": {"kind": "hf_seq2seq", "model": "tester/tiny-t5"},
        "tasks": [{"name": t, "dataset": f"glue_{t}"} for t in TASKS],
        "heads": {"kind": "generative"},
        "experts": {
            "source": "checkpoints",
            "checkpoints": {t: {"format": "hf_seq2seq", "path": f"hf://tester/tiny-t5-{t}"} for t in TASKS},
        },
        "orders": {"explicit": [list(TASKS)], "random": 0},
        "methods": [{"name": "task_arithmetic", "hparams": {"lam": 1.0}}, {"name": "opcm", "hparams": {"alpha": 0.5}}],
        "evaluation": {"batch_size": 4},
    }
    path = tmp_path / "tiny-text.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "cmbench", "run", str(path), "--out", str(out), "--no-ray"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    recs = {r["method"]: r for r in load_results(out / "results")}
    assert set(recs) == {"task_arithmetic", "opcm"}
    for r in recs.values():
        assert r["evaluation"]["metric"] == {"sst2": "exact_match", "stsb": "spearman"}
        assert r["evaluation"]["test_samples"] == {"sst2": len(SST2), "stsb": len(STSB)}
        assert r["E"] == pytest.approx([1.0, 1.0])  # each expert answers its own task (memorised)
        assert len(r["R"]) == 3 and r["R"][0] == recs["opcm"]["R"][0]  # θ0's row, computed once
        assert r["R"][0][0] < 0.5  # random θ0 gives no label word
    # a data-using method has no text network yet: refused when the suite is read
    path.write_text(yaml.safe_dump({**suite, "methods": [{"name": "fisher_average"}]}))
    with pytest.raises(CmbenchError) as e:
        load_suite(path)
    assert "\n" not in str(e.value) and "data-free" in str(e.value) and "methods.0" in str(e.value)


def test_micro_text_tasks_use_the_vocabulary_and_disjoint_splits():
    """Every word a generated prompt or answer holds is in the tokenizer's vocabulary (no
    <unk>), a target task's train, validation and test prompts are distinct, and the STS-like
    task is scored by Spearman's ρ."""
    from cmbench.data import build
    from cmbench.data.text_micro import GENERATORS, tokenizer

    tok = tokenizer()
    for task in GENERATORS:
        td = build("text_micro", task, 3, 0, {"task": task, "n_train": 60, "n_val": 20, "n_test": 20})
        words = [w for s in (td.train, td.val, td.test) for text in s.prompts + s.targets for w in text.split()]
        assert tok.unk_token_id not in tok(" ".join(words))["input_ids"], task
        if not task.startswith("pretrain_"):
            parts = [set(s.prompts) for s in (td.train, td.val, td.test)]
            assert sum(map(len, parts)) == len(set().union(*parts)) == 100, task
    assert build("text_micro", "s", 3, 0, {"task": "similar"}).test.metric == "spearman"


def test_the_micro_text_suites_dry_run_lists_no_download():
    """Generated text tasks have nothing to fetch: the dry run's needs name no hub copy, and its
    cost counts prompts, not images."""
    from cmbench import plan
    from cmbench.suite import load_suite

    suite = load_suite("suites/micro-text-merge.yaml")
    assert plan._data_lines(suite) == []
    assert plan.example_word(suite) == "prompt"
