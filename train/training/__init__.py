"""Training: `minillava build` (compose a model), `minillava sft` (a stage through TRL's `SFTTrainer`: data adapters,
recipes, packing, the feature cache, multi-process launches, TensorBoard) and `minillava merge` (a LoRA into a full
model)."""
