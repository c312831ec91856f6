"""Slurm through its command-line tools; command building and parsing are transport-agnostic."""

from runtimes.slurm.runtime import SlurmRuntime

__all__ = ["SlurmRuntime"]
