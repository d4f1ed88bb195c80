"""Where a finished run is sent besides its run directory ([tracking]: MLflow, W&B,
TensorBoard). Reads only the record and the run's files, after they are written; a tracker
that fails is a warning, never a failed run. mlflow and wandb are imported only when a suite
names them. No torch.
"""
