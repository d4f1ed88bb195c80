"""The on-disk contract of a run directory: its files and staging, locks, and the run record
(types, building, upgrading, writing, reading). No torch.
"""
