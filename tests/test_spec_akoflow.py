"""AkoFlow YAML intake: the seed parses; every problem is reported with its path and line."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.spec import Problem, SpecError, Step, Workflow, parse_akoflow
from bridge.spec.akoflow import Parsed, find_cycles
from bridge.spec.model import Volume
from runtimes.safety import check_image, check_name, check_path, check_webhook_url

SEED = Path(__file__).parent / "data" / "seed.yaml"


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        parse_akoflow(text)
    return info.value.problems


def only_problem(text: str) -> Problem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def doc(activities: str, spec: str = "") -> str:
    """A small workflow; ``activities`` lines start at line 5."""
    return f"name: wf\nspec:\n  runtime: local\n{spec}  activities:\n{activities}"


# --- the seed ---------------------------------------------------------------------------------


def test_seed_parses_and_normalises() -> None:
    text = SEED.read_text(encoding="utf-8")
    parsed = parse_akoflow(text, source=str(SEED))
    wf = parsed.workflow
    assert isinstance(parsed, Parsed) and isinstance(wf, Workflow)
    assert wf.name == "p-inference-nemo"
    assert wf.namespace == "default"
    assert wf.runtime == "sdumont"
    assert wf.image == "/scratch/.../.../p-inference-nemo/sifs/p-inference-nemo.sif"
    assert wf.mount_path == "/scratch/.../.../p-inference-nemo/akf-wine-sdumont"
    assert wf.volumes == (
        Volume(source="/data-akoflow/sifs/", target="/scratch/.../.../p-inference-nemo/sifs"),
        Volume(
            source="/data-akoflow/akf-wine-singularity/",
            target="/scratch/.../.../p-inference-nemo/akf-wine-sdumont",
        ),
    )
    assert [(h.name, h.url) for h in wf.webhooks] == [
        ("inference-examples", "https://myhost.com/mypath/mywebhook")
    ]
    assert wf.storage_policy == {"type": "default"}
    assert wf.schedule is None
    assert wf.source_format == "akoflow"
    assert wf.raw == text
    (step,) = wf.steps
    assert isinstance(step, Step)
    assert step.name == "inference-examples"
    assert step.run == (
        'echo "Running inference-examples"\n'
        "conda run -n tutorial mlflow run .  --env-manager=local\n"
    )
    assert step.image is None and step.mount_path is None and step.runtime is None
    assert step.parents == ()
    assert step.resources.cpus == 1 and step.resources.memory_mib is None
    assert step.source == {"name": "inference-examples", "run": step.run, "cpuLimit": 1}
    assert [w.path for w in parsed.warnings] == ["spec.storagePolicy"]
    assert parsed.warnings[0].line == 5


def test_full_activity_normalises() -> None:
    text = doc(
        "    - name: prep\n"
        "      run: make data\n"
        "    - name: train\n"
        "      run: python train.py\n"
        "      image: docker://pytorch/pytorch:2.3.0\n"
        "      runtime: sdumont\n"
        "      mountPath: /scratch/me/job\n"
        "      cpuLimit: 1500m\n"
        '      memoryLimit: "4Gi"\n'
        "      dependsOn: [prep]\n"
        "      nodeSelector: partition=gdl\n"
        "      keepDisk: true\n",
        spec="  namespace: team-a\n  schedule: '*/5 * * * *'\n",
    )
    parsed = parse_akoflow(text)
    wf = parsed.workflow
    assert wf.namespace == "team-a" and wf.schedule == "*/5 * * * *"
    train = wf.step("train")
    assert train.parents == ("prep",)
    assert train.image == "docker://pytorch/pytorch:2.3.0"
    assert train.runtime == "sdumont" and train.mount_path == "/scratch/me/job"
    assert train.resources.cpus == 2 and train.resources.memory_mib == 4096
    assert train.resources.node_selector == {"partition": "gdl"}
    assert train.keep_disk is True
    assert train.source["memoryLimit"] == "4Gi"
    assert [w.path for w in parsed.warnings] == ["spec.activities[1].keepDisk"]


def test_node_selector_mapping_and_unknown_keys_warn() -> None:
    text = doc(
        "    - name: a\n"
        "      run: x\n"
        "      nodeSelector: {partition: gdl, qos: high, 'kubernetes.io/arch': amd64,"
        " partiton: x}\n"
    )
    parsed = parse_akoflow(text)
    selector = parsed.workflow.steps[0].resources.node_selector
    assert selector == {
        "partition": "gdl",
        "qos": "high",
        "kubernetes.io/arch": "amd64",
        "partiton": "x",
    }
    messages = [str(w) for w in parsed.warnings]
    assert any("'kubernetes.io/arch' means nothing to Slurm" in m for m in messages)
    assert any("did you mean 'partition'?" in m for m in messages)
    assert all(w.line == 7 for w in parsed.warnings)


def test_defaults_and_top_level_webhooks() -> None:
    text = (
        "name: wf\n"
        "webhooks:\n"
        "  - url: http://example.com/hook\n"
        "spec:\n"
        "  activities:\n"
        "    - {name: a, run: x}\n"
    )
    wf = parse_akoflow(text).workflow
    assert wf.namespace == "default" and wf.runtime == "local"
    assert [(h.name, h.url) for h in wf.webhooks] == [("", "http://example.com/hook")]


def test_yaml_anchors_and_merge_keys_work_and_keep_lines() -> None:
    text = doc(
        "    - &base\n"
        "      name: a\n"
        "      run: echo a\n"
        "      cpuLimit: 2\n"
        "    - <<: *base\n"
        "      name: b\n"
        "      memoryLimit: lots\n"
    )
    problem = only_problem(text)
    assert (problem.path, problem.line) == ("spec.activities[1].memoryLimit", 11)
    ok = parse_akoflow(text.replace("lots", "1Gi")).workflow
    assert ok.step("b").resources.cpus == 2 and ok.step("b").run == "echo a"


def test_dates_stay_strings() -> None:
    text = "name: 2024-01-01\nspec:\n  activities:\n    - {name: a, run: x}\n"
    assert parse_akoflow(text).workflow.name == "2024-01-01"


# --- one error class at a time: path, line and message -------------------------------------


@pytest.mark.parametrize(
    ("activities", "path", "line", "fragment"),
    [
        ("    - name: a\n", "spec.activities[0].run", 5, "required field is missing"),
        ("    - name: a\n      run: ''\n", "spec.activities[0].run", 6, "run is empty"),
        ("    - name: a\n      run: '  \n'\n", "spec.activities[0].run", 6, "run is empty"),
        ("    - name: a\n      run: 42\n", "spec.activities[0].run", 6, "expected a string"),
        ("    - name: a\n      run: [x]\n", "spec.activities[0].run", 6, "got a list"),
        (
            "    - name: a\n      run: x\n      cpuLimit: abc\n",
            "spec.activities[0].cpuLimit",
            7,
            "not a CPU quantity: 'abc' (use 1, 2, 0.5 or 500m)",
        ),
        (
            "    - name: a\n      run: x\n      cpuLimit: 0\n",
            "spec.activities[0].cpuLimit",
            7,
            "must be positive",
        ),
        (
            "    - name: a\n      run: x\n      memoryLimit: 4gb\n",
            "spec.activities[0].memoryLimit",
            7,
            "not a memory quantity: '4gb'",
        ),
        (
            "    - name: a\n      run: x\n      cpulimit: 1\n",
            "spec.activities[0].cpulimit",
            7,
            "unknown field 'cpulimit'; did you mean 'cpuLimit'?",
        ),
        (
            "    - name: a\n      run: x\n    - name: b\n      run: y\n      dependOn: [a]\n",
            "spec.activities[1].dependOn",
            9,
            "unknown field 'dependOn'; did you mean 'dependsOn'?",
        ),
        (
            "    - name: a\n      run: x\n      dependsOn: a\n",
            "spec.activities[0].dependsOn",
            7,
            "expected a list, got the string 'a'",
        ),
        (
            "    - name: a\n      run: x\n      keepDisk: 'yes'\n",
            "spec.activities[0].keepDisk",
            7,
            "expected true or false",
        ),
        (
            "    - name: prep\n      run: x\n"
            "    - name: b\n      run: y\n      dependsOn: [perp]\n",
            "spec.activities[1].dependsOn[0]",
            9,
            "depends on 'perp', which is not an activity of this workflow; did you mean 'prep'?",
        ),
        (
            "    - name: a\n      run: x\n    - name: a\n      run: y\n",
            "spec.activities[1].name",
            7,
            "duplicate activity name 'a' (first at spec.activities[0], line 5)",
        ),
        (
            "    - name: a\n      run: x\n      nodeSelector: partition\n",
            "spec.activities[0].nodeSelector",
            7,
            "must be 'key=value'",
        ),
        (
            "    - name: a\n      run: x\n      nodeSelector: 'partition=gdl\n        #SBATCH'\n",
            "spec.activities[0].nodeSelector",
            7,
            "contains",
        ),
        (
            "    - name: a\n      run: x\n      image: ./rel.sif\n",
            "spec.activities[0].image",
            7,
            "must be an absolute path to an image file or a docker://",
        ),
        ("    -\n", "spec.activities[0]", 5, "expected a mapping, got nothing"),
        ("    []\n", "spec.activities", 4, "the workflow has no activities"),
    ],
)
def test_each_error_names_path_and_line(
    activities: str, path: str, line: int, fragment: str
) -> None:
    problem = only_problem(doc(activities))
    assert problem.path == path
    assert problem.line == line
    assert fragment in problem.message
    assert str(problem).startswith(f"{path} (line {line}): ")


@pytest.mark.parametrize(
    ("spec", "path", "line", "fragment"),
    [
        ("  schedule: '61 * * * *'\n", "spec.schedule", 4, "not a valid cron expression"),
        ("  schedule: daily\n", "spec.schedule", 4, "not a valid cron expression"),
        ("  volumes: ['/a:/b:/c']\n", "spec.volumes[0]", 4, "exactly one ':'"),
        ("  volumes:\n    - relative:/b\n", "spec.volumes[0]", 5, "must be an absolute path"),
        ("  volumes:\n    - /a:/x/../etc\n", "spec.volumes[0]", 5, "'..' segment"),
        ("  volumes: /a:/b\n", "spec.volumes", 4, "expected a list"),
        ("  webhooks:\n    - url: ftp://x/y\n", "spec.webhooks[0].url", 5, "http:// or https://"),
        ("  webhooks:\n    - url: 'https://'\n", "spec.webhooks[0].url", 5, "has no host"),
        ("  webhooks:\n    - name: n\n", "spec.webhooks[0].url", 5, "required field"),
        ("  image: http://x/y.sif\n", "spec.image", 4, "unsupported scheme 'http'"),
        ("  mountPath: work\n", "spec.mountPath", 4, "must be an absolute path"),
        ("  namespace: 'a b'\n", "spec.namespace", 4, "' ' (space)"),
        ("  storagePolicy: {type: x, size: 1}\n", "spec.storagePolicy.size", 4, "did you mean"),
        ("  cpuLimit: 1\n", "spec.cpuLimit", 4, "belongs in each activity"),
    ],
)
def test_spec_level_errors(spec: str, path: str, line: int, fragment: str) -> None:
    problem = only_problem(doc("    - {name: a, run: x}\n", spec=spec))
    assert (problem.path, problem.line) == (path, line)
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("text", "path", "line", "fragment"),
    [
        ("", "", 1, "the document is empty"),
        ("- a\n- b\n", "", 1, "must be a mapping with 'name' and 'spec'"),
        ("just text\n", "", 1, "must be a mapping"),
        ("name: x\nspec: [\n", "", 3, "YAML syntax error"),
        ("name: x\nspec:\n  activities:\n\t- a\n", "", 4, "YAML syntax error"),
        ("name: x\n---\nname: y\n", "", 2, "YAML syntax error"),
        ("name: x\n", "spec", 1, "required field is missing"),
        ("spec:\n  activities: [{name: a, run: x}]\n", "name", 1, "required field is missing"),
        ("name: x\nspec:\n", "spec", 2, "expected a mapping, got nothing"),
        ("name: x\nspec: {}\n", "spec.activities", 2, "required field is missing"),
        (
            "name: x\nruntime: y\nspec:\n  activities: [{name: a, run: x}]\n",
            "runtime",
            2,
            "did you mean 'spec.runtime'",
        ),
        (
            "name: x\nname: y\nspec:\n  activities: [{name: a, run: x}]\n",
            "",
            2,
            "duplicate key 'name' (first on line 1)",
        ),
        ("a: &a [*a]\n", "", 1, "recursive alias"),
        ("name: 12\nspec:\n  activities: [{name: a, run: x}]\n", "name", 1, "put it in quotes"),
    ],
)
def test_document_level_errors(text: str, path: str, line: int, fragment: str) -> None:
    problem = only_problem(text)
    assert (problem.path, problem.line) == (path, line)
    assert fragment in problem.message


def test_alias_bomb_is_rejected_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    problem = only_problem("\n".join(lines) + "\n")
    assert "too large" in problem.message


# --- several errors at once ----------------------------------------------------------------


def test_every_problem_is_reported_in_line_order() -> None:
    text = (
        "name: 'bad name'\n"  # 1
        "spec:\n"  # 2
        "  image: 'http://x'\n"  # 3
        "  activities:\n"  # 4
        "    - name: a\n"  # 5
        "      run: echo\n"  # 6
        "      cpulimit: 2\n"  # 7
        "    - name: b\n"  # 8
        "      cpuLimit: abc\n"  # 9
        "      memoryLimit: 0\n"  # 10
        "      dependsOn: [c, zz]\n"  # 11
        "    - name: c\n"  # 12
        "      run: echo\n"  # 13
        "      dependsOn: [b]\n"  # 14
    )
    with pytest.raises(SpecError) as info:
        parse_akoflow(text, source="wf.yaml")
    error = info.value
    found = [(p.path, p.line) for p in error.problems]
    assert found == [
        ("name", 1),
        ("spec.image", 3),
        ("spec.activities[0].cpulimit", 7),
        ("spec.activities[1].run", 8),
        ("spec.activities[1].cpuLimit", 9),
        ("spec.activities[1].memoryLimit", 10),
        ("spec.activities[1].dependsOn", 11),
        ("spec.activities[1].dependsOn[1]", 11),
    ]
    assert error.source == "wf.yaml"
    lines = str(error).splitlines()
    assert len(lines) == len(found)
    assert lines[0] == (
        "name (line 1): workflow name 'bad name' may contain only letters, digits, "
        "'.', '_' and '-' (found ' ' (space))"
    )
    assert "dependency cycle: b -> c -> b" in lines[6]
    assert isinstance(error, ValueError)
    assert pickle.loads(pickle.dumps(error)).problems == error.problems


# --- dependencies ---------------------------------------------------------------------------


def test_cycle_message_names_the_cycle() -> None:
    text = doc(
        "    - {name: a, run: x, dependsOn: [c]}\n"
        "    - {name: b, run: x, dependsOn: [a]}\n"
        "    - {name: c, run: x, dependsOn: [b]}\n"
        "    - {name: d, run: x, dependsOn: [d]}\n"
    )
    problems = problems_of(text)
    assert [(p.path, p.line, p.message) for p in problems] == [
        (
            "spec.activities[0].dependsOn",
            5,
            "dependency cycle: a -> c -> b -> a (each depends on the next)",
        ),
        ("spec.activities[3].dependsOn", 8, "dependency cycle: d -> d (each depends on the next)"),
    ]


def test_find_cycles_reports_each_cycle_once_and_handles_long_chains() -> None:
    assert find_cycles({"a": ["b"], "b": ["a"], "c": ["a"]}) == [["a", "b", "a"]]
    assert find_cycles({"a": [], "b": ["a"]}) == []
    chain = {f"s{i}": [f"s{i + 1}"] for i in range(5000)} | {"s5000": []}
    assert find_cycles(chain) == []


def test_duplicate_dependency_is_a_warning_and_deduplicated() -> None:
    text = doc("    - {name: a, run: x}\n    - {name: b, run: x, dependsOn: [a, a]}\n")
    parsed = parse_akoflow(text)
    assert parsed.workflow.step("b").parents == ("a",)
    assert [(w.path, w.line) for w in parsed.warnings] == [("spec.activities[1].dependsOn", 6)]


# --- hostile values -------------------------------------------------------------------------

HOSTILE = ["a;rm -rf /", "$(id)", "has space", "`id`", "a\nb", "x'y", 'x"y', "-rf"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_are_rejected_for_workflow_and_activity(value: str) -> None:
    name = yaml.safe_dump(value, default_style='"').strip().removesuffix("\n...")
    problems = problems_of(
        f"name: {name}\nspec:\n  namespace: {name}\n  activities:\n    - name: {name}\n"
        "      run: x\n"
    )
    assert [(p.path, p.line) for p in problems] == [
        ("name", 1),
        ("spec.namespace", 3),
        ("spec.activities[0].name", 5),
    ]
    assert "workflow name" in problems[0].message
    assert "namespace" in problems[1].message
    assert "activity name" in problems[2].message


@pytest.mark.parametrize(
    "value", ["/a;rm -rf /", "/$(id)", "/has space", "/x/../etc", "/x/`id`", "/a\nb", "/x/.."]
)
def test_hostile_paths_are_rejected_everywhere(value: str) -> None:
    path = yaml.safe_dump(value, default_style='"').strip().removesuffix("\n...")
    problems = problems_of(
        doc(
            f"    - name: a\n      run: x\n      mountPath: {path}\n      image: {path}\n",
            spec=f"  mountPath: {path}\n  image: {path}\n  volumes: [{path}]\n",
        )
    )
    assert [p.path for p in problems] == [
        "spec.mountPath",
        "spec.image",
        "spec.volumes[0]",
        "spec.activities[0].mountPath",
        "spec.activities[0].image",
    ]


def test_hostile_volume_sides_are_named() -> None:
    problems = problems_of(doc("    - {name: a, run: x}\n", spec="  volumes: ['/ok:/b c']\n"))
    assert problems[0].path == "spec.volumes[0]"
    assert "volume target '/b c' contains ' ' (space)" in problems[0].message


@pytest.mark.parametrize(
    ("check", "value", "fragment"),
    [
        (check_name, "a;rm -rf /", "';' (semicolon), ' ' (space), '/'"),
        (check_name, "$(id)", "'$' (dollar sign)"),
        (check_name, "`id`", "'`' (backtick)"),
        (check_name, "has space", "' ' (space)"),
        (check_name, "", "is empty"),
        (check_name, "-x", "must start with a letter or digit"),
        (check_name, "x" * 64, "at most 63"),
        (check_name, "nämé", "'ä'"),
        (check_path, "/x/../etc", "'..' segment"),
        (check_path, "/a\x00b", "'\\x00' (NUL)"),
        (check_path, "/a\nb", "'\\n' (newline)"),
        (check_path, "/a'b", "(single quote)"),
        (check_path, '/a"b', "(double quote)"),
        (check_path, "", "is empty"),
        (check_path, "x/y", "absolute path"),
        (check_image, "docker://ubuntu;id", "';' (semicolon)"),
        (check_image, "ftp://x", "unsupported scheme"),
        (check_image, "docker://", "not a valid docker:// reference"),
        (check_webhook_url, "http://x y/", "whitespace"),
        (check_webhook_url, "http://x:99999/", "not a valid URL"),
    ],
)
def test_safety_checks_name_the_offending_characters(
    check: Callable[[str, str], str], value: str, fragment: str
) -> None:
    with pytest.raises(ValueError) as info:
        check(value, "field")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (check_name, "inference-examples"),
        (check_name, "A.b_c-9"),
        (check_name, "x" * 63),
        (check_path, "/scratch/.../.../x"),
        (check_path, "/data-akoflow/sifs/"),
        (check_path, "/a/b+c@d%e=f,g:h~i"),
        (check_image, "/scratch/img.sif"),
        (check_image, "docker://ghcr.io/org/img:1.0@sha256:abc"),
        (check_image, "library://user/col/img:latest"),
        (check_image, "oras://reg/img:1"),
        (check_image, "shub://user/img"),
        (check_webhook_url, "https://myhost.com/mypath/mywebhook"),
        (check_webhook_url, "http://127.0.0.1:8080/hook?x=1"),
    ],
)
def test_safety_accepts_plain_values(check: Callable[[str, str], str], value: str) -> None:
    assert check(value, "field") == value


# --- run text survives byte-exact ------------------------------------------------------------

RUN_SAMPLES = [
    "echo 'single' \"double\" $HOME ${X:-y} `date` $(id) \\ \\n end\n",
    "printf '%s\\n' \"$@\"\ncat <<'EOF'\n  indented\tTab\nEOF\n",
    "echo ünïcødé 日本語 🚀\r\nexit 3",
    "   leading spaces and trailing   ",
    "#!/bin/bash\nset -euo pipefail\n\n\n",
]


def _roundtrip(run: str, style: str | None = None) -> str:
    text = yaml.safe_dump(
        {"name": "wf", "spec": {"activities": [{"name": "a", "run": run}]}},
        allow_unicode=True,
        default_style=style,
    )
    return parse_akoflow(text).workflow.steps[0].run


@pytest.mark.parametrize("run", RUN_SAMPLES)
def test_run_survives_byte_exact(run: str) -> None:
    assert _roundtrip(run) == run


def test_block_scalar_run_is_kept_as_written() -> None:
    text = doc(
        "    - name: a\n"
        "      run: |\n"
        "        echo \"$X\" '`y`' \\\n"
        "          ünï\n"
        "      cpuLimit: 1\n"
    )
    assert parse_akoflow(text).workflow.steps[0].run == "echo \"$X\" '`y`' \\\n  ünï\n"


# PyYAML's emitter writes NEL/LS/PS (YAML 1.1 line breaks) raw into single-quoted scalars,
# which every YAML loader then reads as a line break: dump those in double quotes instead.
_LINE_BREAKS = "\x85\u2028\u2029"
_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(_TEXT.filter(lambda s: s.strip() != ""))
def test_any_run_text_survives_byte_exact_double_quoted(run: str) -> None:
    assert _roundtrip(run, style='"') == run


@settings(max_examples=200, deadline=None)
@given(_TEXT.filter(lambda s: s.strip() != "" and not any(c in _LINE_BREAKS for c in s)))
def test_any_run_text_survives_byte_exact_default_style(run: str) -> None:
    assert _roundtrip(run) == run
