"""Models: building and loading them, with their device, dtype and attention policy and safetensors checkpoints
(`models`), a model's LM head at the response positions only (`heads`), and generation (`generate`).

May import the method's modules and `experiment.config` (the ModelSpec a model is built from); never `training`
(which alone knows about processes and sharding), `analysis` or `notebook`.
"""
