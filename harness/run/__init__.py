"""Running a suite: models, adapters, training, scoring, the pipeline, resume and merge. The only
folder whose modules may import torch, transformers or peft.
"""
