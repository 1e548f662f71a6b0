"""Training: batches, the teacher cache, the step and its loss, the loop and SFT (`train`); the step's LM head, CE and
KD fused in row chunks, the GPU path (`objective`); and everything about several processes (`distributed`: DDP
through accelerate, FSDP2, shards, collectives).

May import the method's modules, `modeling` and `experiment.config` (the TrainSpec); never `analysis` or `notebook`.
"""
