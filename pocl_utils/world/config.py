"""The sizes and knobs of a generated world (`WorldConfig`) and the profiles' presets."""
from __future__ import annotations

from dataclasses import dataclass, fields

from .families import MAX_ITEMS, WORDS


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and knobs of a generated world. Split sizes default to Dolly's 12.5k : 1k : 0.5k proportions / 5."""

    n_train: int = 2500
    n_valid: int = 200
    n_test: int = 100  # DollyEval
    n_ood: int = 100  # rows in each of SelfInst, S-NI, UnNI
    n_vicuna: int = 40  # VicunaEval (the paper's has 80)
    max_level: int = 4  # training levels are 1..max_level
    ood_extra_levels: int = 2  # UnNI levels are max_level+1 .. max_level+ood_extra_levels
    seed: int = 0
    pretrain_qa_frac: float = 0.5  # pretrain_corpus: share of Q/A texts (the rest are world sentences)
    pretrain_template: bool = False  # pretrain_corpus: wrap Q/A texts in the MiniLLM template (GPT-2 never saw it)
    n_words: int = 64  # the world speaks the first n_words of WORDS (and their made-up translations)
    level_pools: bool = False  # level L draws its words from the first n_words * L / max_level: rarer words are harder
    easy_cover: int = 0  # k > 0: every answer word is in >= k training rows of the easiest quarter (version 4)
    ref_noise: float = 0.0  # each item of a training reference is a wrong word with this probability (version 4)
    ref_confusion: float = 0.0  # each item of a training reference is its word's fixed confuser with this probability
    # major_words = k > 0: the training references of k words (a seeded choice, `generation.major_words`) carry their
    # confuser with probability ref_confusion_major instead of ref_confusion; at >= 0.5 the annotators mostly get those
    # words wrong, so the references' likeliest answer is wrong where a teacher tuned on the clean answers is right
    major_words: int = 0
    ref_confusion_major: float = 0.0
    # the tokenizer learns from the training references' clean answers instead of the noisy ones, so the token ids,
    # and with them the student's warm start, do not move with ref_noise or ref_confusion
    tokenizer_clean: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), {"int": int, "float": float, "bool": bool}[str(f.type)]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"WorldConfig.{f.name}: expected {kind.__name__}, got {value!r}")
        for name in ("n_train", "n_valid", "n_test", "n_ood", "n_vicuna", "max_level", "ood_extra_levels", "n_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_level + self.ood_extra_levels + 2 > MAX_ITEMS:
            raise ValueError(f"WorldConfig: max_level + ood_extra_levels must be <= {MAX_ITEMS - 2} "
                             f"(lists get up to level + 2 items), got {self.max_level + self.ood_extra_levels}")
        if self.n_words > len(WORDS) or self.n_words < 2 * self.max_level:
            raise ValueError(f"WorldConfig.n_words must be in [2 * max_level, {len(WORDS)}], got {self.n_words}")
        if not 0.0 <= self.pretrain_qa_frac <= 1.0:
            raise ValueError(f"WorldConfig.pretrain_qa_frac must be in [0, 1], got {self.pretrain_qa_frac}")
        if self.easy_cover < 0:
            raise ValueError(f"WorldConfig.easy_cover must be >= 0, got {self.easy_cover}")
        if self.easy_cover and self.level_pools:
            raise ValueError("WorldConfig: easy_cover puts every word in the easiest quarter; level_pools keeps the "
                             "rarest words out of it: set one of them")
        if not 0.0 <= self.ref_noise < 0.5:
            raise ValueError(f"WorldConfig.ref_noise must be in [0, 0.5), got {self.ref_noise}")
        if not 0.0 <= self.ref_confusion < 0.5 - self.ref_noise:
            raise ValueError(f"WorldConfig.ref_confusion must be in [0, 0.5 - ref_noise), got {self.ref_confusion} "
                             f"(ref_noise {self.ref_noise}): the right word must stay the likeliest")
        if not 0 <= self.major_words <= self.n_words:
            raise ValueError(f"WorldConfig.major_words must be in [0, n_words], got {self.major_words}")
        if not 0.0 <= self.ref_confusion_major < 1.0 - self.ref_noise:
            raise ValueError(f"WorldConfig.ref_confusion_major must be in [0, 1 - ref_noise), got "
                             f"{self.ref_confusion_major} (ref_noise {self.ref_noise})")
        if (self.major_words > 0) != (self.ref_confusion_major > 0):
            raise ValueError("WorldConfig: major_words and ref_confusion_major go together (both 0, or both > 0), got "
                             f"{self.major_words} and {self.ref_confusion_major}")


PRESETS = {
    "smoke": dict(n_train=64, n_valid=16, n_test=16, n_ood=16, n_vicuna=8, max_level=3),
    "classroom": dict(n_train=1000, n_valid=80, n_test=40, n_ood=48, n_vicuna=24, max_level=4,
                      pretrain_template=True, pretrain_qa_frac=0.8, n_words=128, level_pools=True),
    "laptop": dict(n_train=2500, n_valid=200, n_test=300, n_ood=300, n_vicuna=120, max_level=4,
                   pretrain_template=True, pretrain_qa_frac=0.8, n_words=128, level_pools=True),
    # version 4 (issue 23, items 3 and 4): no knowledge exclusive to the hard subset (every level draws from all
    # n_words, and every answer word is in >= easy_cover rows of the easiest quarter), and noisy training references
    # that the teacher, tuned on the clean ones, corrects (ref_noise)
    "smoke-v4": dict(n_train=64, n_valid=16, n_test=16, n_ood=16, n_vicuna=8, max_level=3, n_words=8, easy_cover=1,
                     ref_noise=0.2),
    "classroom-v4": dict(n_train=1000, n_valid=80, n_test=40, n_ood=48, n_vicuna=24, max_level=4,
                         pretrain_template=True, pretrain_qa_frac=0.8, n_words=64, easy_cover=3, ref_noise=0.2),
    "laptop-v4": dict(n_train=2500, n_valid=200, n_test=300, n_ood=300, n_vicuna=120, max_level=4,
                      pretrain_template=True, pretrain_qa_frac=0.8, n_words=64, easy_cover=8, ref_noise=0.2),
    # version 5 (issue 23, item 4; results/laptop/probe_world_confusions/): version 4 with systematic confusions in
    # the training references instead of random wrong words, at the same rate, so that the SFT student's greedy answer
    # inherits them and the teacher, tuned on the clean answers, has more to teach (P4: every cell on the probe, one of
    # four in run 6; docs/history.md)
    "laptop-v5": dict(n_train=2500, n_valid=200, n_test=300, n_ood=300, n_vicuna=120, max_level=4,
                      pretrain_template=True, pretrain_qa_frac=0.8, n_words=64, easy_cover=8, ref_confusion=0.2),
    # version 6 (issue 23, item 4; results/laptop/probe_world_major_words/): version 5 where 16 of the 64 words are
    # mostly mislabelled (their confuser with probability 0.6, the others' 0.067: about 20% wrong items, as in version
    # 5), so the references' likeliest answer is wrong there and only the teacher is right; the tokenizer learns from
    # the clean answers. Chosen by its rule on the premises alone (P1, P2, all four P4 cells), before any POCL run;
    # run 7 holds every premise too (FINDINGS.md)
    "laptop-v6": dict(n_train=2500, n_valid=200, n_test=300, n_ood=300, n_vicuna=120, max_level=4,
                      pretrain_template=True, pretrain_qa_frac=0.8, n_words=64, easy_cover=8, ref_confusion=0.067,
                      major_words=16, ref_confusion_major=0.6, tokenizer_clean=True),
    "gpu": dict(n_train=20000, n_valid=1600, n_test=800, n_ood=400, n_vicuna=80, max_level=6,
                pretrain_template=True, pretrain_qa_frac=0.8, n_words=128, level_pools=True),
}


def world_config(profile: str, **overrides) -> WorldConfig:
    """The preset WorldConfig of a profile (a key of PRESETS: "smoke", "laptop", "laptop-v4", ...), with overrides.

    Returns the WorldConfig (its own checks run: TypeError / ValueError on a bad field value).
    Raises ValueError: an unknown profile or an unknown WorldConfig field among `overrides`.
    """
    if profile not in PRESETS:
        raise ValueError(f"unknown world profile {profile!r}; valid: {sorted(PRESETS)}")
    valid = {f.name for f in fields(WorldConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown WorldConfig field(s) {unknown}; valid: {sorted(valid)}")
    return WorldConfig(**{**PRESETS[profile], **overrides})
