"""akobridge: AkoFlow and Peak-style workflows on Slurm supercomputers."""

__version__ = "0.1.0"
