"""What the user wrote: the suite schema, reading a suite file and its overrides, arm names, sweeps
and shards, gate-rule syntax, and the eval data with its prompt templates. No torch; lower than
every other folder.
"""
