"""The Peak-style workflow service: definitions (and, as they come, executions and triggers).

Bodies and replies follow seeds/peak-workflows-sdk.txt and reference/peak-api.md.
"""

from bridge.peak.cron import check_cron, cron_trigger
from bridge.peak.definition import Definition, Step, parse_definition
from bridge.peak.patch import apply_patch, describe_json
from bridge.peak.problems import DefinitionError

__all__ = [
    "Definition",
    "DefinitionError",
    "Step",
    "apply_patch",
    "check_cron",
    "cron_trigger",
    "describe_json",
    "parse_definition",
]
