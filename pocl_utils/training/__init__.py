"""Training: the batches and their streams (`batches`); the teacher's outputs cached once per training set, exact
or top-k (`teacher_cache`); one step's loss, CE + KD on the response tokens (`step`), its LM head, CE and KD fused in
row chunks, the GPU path (`objective`); the optimizer, the loop and SFT (`loop`); the KD step's loss with GKD's
on-policy samples (`kd`); and everything about several processes (`distributed`: DDP through accelerate, FSDP2,
shards, collectives). Inside, a module imports only those listed before it in: distributed, objective, batches,
step, teacher_cache, loop, kd.

May import the method's modules, `modeling` and `experiment.config` (the TrainSpec); never `analysis` or `notebook`.
"""
