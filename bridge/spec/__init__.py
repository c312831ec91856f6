"""Workflow specifications: AkoFlow YAML (and later Peak JSON) into one internal model."""

from bridge.spec.akoflow import Parsed, parse_akoflow
from bridge.spec.errors import Problem, SpecError
from bridge.spec.model import Step, Workflow

__all__ = ["Parsed", "Problem", "SpecError", "Step", "Workflow", "parse_akoflow"]
