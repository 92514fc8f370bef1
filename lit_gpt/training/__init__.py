"""The training layer, one module per mechanism: the step and validation (`step`), the learning-rate schedule (`lr`),
AdamW's groups and flags (`optimizer`), the loggers and the console line (`logger`), training checkpoints
(`checkpoint`), parallelism and compilation (`parallel`, `float8`), the launch (`launch`), resource estimates
(`resources`) and the finetuning loop (`finetune`)."""
