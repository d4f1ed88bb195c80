"""harness: did this adapter make the model better, by how much, and is that real?"""

__version__ = "0.1.0"
