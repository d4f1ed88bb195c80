"""Numbers only: paired bootstrap and permutation statistics, statistics across training seeds, and
where speed and memory were measured. No torch.
"""
