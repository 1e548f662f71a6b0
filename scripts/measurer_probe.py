"""Does a better pre-trained student give POCL's difficulty measurer signal on the laptop world? (issue 5)

For each setting (pre-training steps, whether the pre-training texts use the MiniLLM template), pre-trains the laptop
student from scratch exactly as `pipeline._build_student` does, ranks the 2,500 training rows with it
(`difficulty.score_samples`), and reports Spearman's rho of each measurer with the world's true difficulty
(`frames.rank_agreement`) and the share of rows whose greedy output scores ROUGE-L 0. Nothing in the workspace is
replaced. Writes results/laptop/measurer_probe.{csv,md}.

    python scripts/measurer_probe.py            # the committed settings, about 1-3 min each on one core
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd
import torch

from pocl_utils.analysis import frames, tables
from pocl_utils.experiment.config import TrainSpec, get_profile
from pocl_utils.difficulty import score_samples
from pocl_utils.modeling.models import build_model
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.experiment.workspace import lm_blocks
from pocl_utils.experiment.results import REPO_ROOT
from pocl_utils.training.loop import sft
from pocl_utils.world import pretrain_corpus, world_config

SETTINGS = [(200, False), (1000, False), (3000, False), (1000, True)]  # (steps, MiniLLM template in pre-training)


def probe(ws, steps: int, template: bool) -> dict:
    p, tok = ws.profile, ws.tokenizer
    t0 = time.time()
    model = build_model(p.student, len(tok), p.max_len + p.max_new_tokens, seed=p.seed + 1, eos_id=ws.eos_id)
    cfg = replace(world_config(p.world), seed=p.seed, pretrain_template=template)
    blocks = lm_blocks(pretrain_corpus(cfg, 4000), tok, p.max_len)
    sft(model, blocks, ws.pad_id, TrainSpec(lr=p.kd.lr, batch_size=p.kd.batch_size, epochs=1.0), seed=p.seed + 1,
        steps=steps, desc=f"pre-training {steps} steps")
    enc = ws.encoded("train")
    refs = [[ws.sets["train"][e.index]["output"]] for e in enc]
    ranking = score_samples(model.eval(), tok, enc, max_new_tokens=p.max_new_tokens, references=refs)
    frame = frames.ranking_frame(ranking, ws.sets["train"], p.n_subsets)
    rho = frames.rank_agreement(frame).set_index("ranking")["spearman_rho"]
    return {"pretrain_steps": steps, "template_in_pretraining": template, "rouge_l_zero_share": (frame.rouge_l == 0).mean(),
            "rouge_l_mean": frame.rouge_l.mean(), "rho_rouge_l": rho["rouge_l"], "rho_ce": rho["ce"],
            "rho_fusion": rho["fusion"], "wall_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ws = prepare(get_profile("laptop"))
    rows = [probe(ws, steps, template) for steps, template in SETTINGS]
    frame = pd.DataFrame(rows)
    tables.save_table(frame, "measurer_probe", REPO_ROOT / "results" / "laptop")
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
