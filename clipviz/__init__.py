"""clipviz: see, teach and tune gradient clipping."""

__version__ = "0.1.0"
