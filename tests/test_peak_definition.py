"""Peak-style workflow definitions (bridge.peak): the seed's bodies as written, bad bodies and
the field paths of their problems, cycles, crontab weekdays, describe and patch round-trips."""

from __future__ import annotations

import ast
import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.peak import (
    Definition,
    DefinitionError,
    apply_patch,
    cron_trigger,
    describe_json,
    parse_definition,
)
from bridge.spec import SpecError

SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "peak-workflows-sdk.txt"


def seed_bodies(name: str) -> list[dict[str, Any]]:
    """Every ``NAME: dict[str, Any] = {...}`` of the seed, read as the Python literal it is
    (each body ends with a ``}`` alone on its line)."""
    text = SEED.read_text()
    pattern = rf"^{name}: dict\[str, Any\] = (\{{.*?^\}})$"
    return [ast.literal_eval(m.group(1)) for m in re.finditer(pattern, text, re.M | re.S)]


CRON = seed_bodies("cron_workflow_body")
WEBHOOK = seed_bodies("webhook_workflow_body")
MANUAL = seed_bodies("manual_workflow_body")
UPDATED = seed_bodies("updated_body")
PATCH_BODY = seed_bodies("body")


def test_the_seed_holds_the_bodies_this_file_reads() -> None:
    assert [len(CRON), len(WEBHOOK), len(MANUAL), len(UPDATED), len(PATCH_BODY)] == [2, 1, 1, 2, 1]
    assert CRON[0]["steps"]["stepName"]["repository"]["url"] == "https://github.com/org/repo"
    assert WEBHOOK[0]["steps"]["step2"]["parents"] == ["step1"]


@pytest.mark.parametrize("body", [*CRON, *WEBHOOK, *MANUAL, *UPDATED],
                         ids=["cron", "cron-create-or-update", "webhook", "manual", "update",
                              "update-create-or-update"])
def test_seed_body_parses_and_gives_itself_back(body: dict[str, Any]) -> None:
    defn = parse_definition(copy.deepcopy(body))
    assert defn.to_body() == body
    assert set(defn.steps) == set(body["steps"])


def test_seed_values_land_in_the_right_fields() -> None:
    cron, webhook, manual = parse_definition(CRON[0]), parse_definition(WEBHOOK[0]), \
        parse_definition(MANUAL[0])
    assert cron.triggers and cron.triggers[0].cron == "0 0 * * *"
    assert cron.retry_options and cron.retry_options.number_of_retries == 3
    assert cron.watchers and cron.watchers[1].events.runtime_exceeded == 10
    assert cron.watchers[2].email and cron.watchers[2].email.recipients.to[1] == "user2@peak.ai"
    step = cron.steps["stepName"]
    assert (step.image_id, step.image_version_id, step.step_timeout) == (123, 1, 30)
    assert step.resources and step.resources.storage == "10GB"
    assert step.parameters and step.parameters.env == {"key": "value"}
    assert webhook.triggers and webhook.triggers[0].webhook is True
    rule = webhook.steps["step2"].execution_parameters
    assert rule and rule.conditional and rule.conditional[0].step_name == "step1"
    assert webhook.steps["step2"].parent_names == ("step1",)
    run = manual.steps["stepName"].run_configuration
    assert run and run.skip_configuration and run.skip_configuration.skip_dag is True
    assert manual.triggers == []


# --- bad bodies ----------------------------------------------------------------------------

DROP = object()


def changed(path: str, value: object, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of the seed's webhook body (or ``base``) with ``path`` (dots; ``[i]`` for list
    items) set to ``value``, or removed for ``DROP``."""
    body = copy.deepcopy(base or WEBHOOK[0])
    parts: list[str | int] = [int(p) if p.isdigit() else p
                              for p in re.split(r"\.|\[(\d+)\]", path) if p]
    holder: Any = body
    for part in parts[:-1]:
        holder = holder[part]
    if value is DROP:
        del holder[parts[-1]]
    else:
        holder[parts[-1]] = value
    return body


S1, S2 = "steps.step1", "steps.step2"
BAD: list[tuple[str, object, str, str]] = [
    # (path changed, new value, field path of the problem, words in its message)
    ("name", "my workflow", "name", "may contain only"),
    ("name", DROP, "name", "required field is missing"),
    ("steps", {}, "steps", "must not be empty"),
    ("steps", [], "steps", "expected an object"),
    ("tags[0]", {"name": ""}, "tags[0].name", "must not be empty"),
    ("triggers", [{"cron": "0 0 * *"}], "triggers[0].cron", "needs 5 fields"),
    ("triggers", [{"cron": "0 0 * * * *"}], "triggers[0].cron", "not 6"),
    ("triggers", [{"cron": "61 * * * *"}], "triggers[0].cron", "minute field '61'"),
    ("triggers", [{"cron": "0 25 * * *"}], "triggers[0].cron", "hour field '25'"),
    ("triggers", [{"cron": "0 0 * * 8"}], "triggers[0].cron", "day-of-week field '8'"),
    ("triggers", [{"cron": "0 0 * FOO *"}], "triggers[0].cron", "month field"),
    ("triggers", [{"cron": "@daily"}], "triggers[0].cron", "needs 5 fields"),
    ("triggers", [{"webhook": False}], "triggers[0]", "webhook must be true"),
    ("triggers", [{}], "triggers[0]", "either"),
    ("triggers", [{"cron": "0 0 * * *", "webhook": True}], "triggers[0]", "either"),
    ("triggers", [{"webhook": True}, {"webhook": True}], "triggers[1]", "second webhook"),
    ("triggers", [{"webhook": True, "webhookPolicy": "keep"}], "triggers[0].webhookPolicy",
     "'generate' or 'preserve'"),
    ("retryOptions", {"numberOfRetries": 6}, "retryOptions.numberOfRetries", "at most 5"),
    ("retryOptions", {"duration": 121}, "retryOptions.duration", "at most 120"),
    ("retryOptions", {"duration": -1}, "retryOptions.duration", "at least 0"),
    ("retryOptions", {"exitCodes": [1, "2"]}, "retryOptions.exitCodes[1]", "whole number"),
    ("retryOptions", {"exitCodes": [256]}, "retryOptions.exitCodes[0]", "at most 255"),
    ("retryOptions", {"exponentialBackoff": "yes"}, "retryOptions.exponentialBackoff",
     "true or false"),
    ("retryOptions", {"retries": 2}, "retryOptions.retries", "unknown field 'retries'"),
    (f"{S1}.runConfiguration.retryOptions.numberOfRetries", 10,
     f"{S1}.runConfiguration.retryOptions.numberOfRetries", "at most 5"),
    (f"{S1}.runConfiguration.skipConfiguration", {"skipDag": True},
     f"{S1}.runConfiguration.skipConfiguration.skipDag", "did you mean 'skipDAG'"),
    ("watchers", [{"user": "abc", "events": {}}], "watchers[0].user", "not an e-mail address"),
    ("watchers", [{"user": "a@b.io"}], "watchers[0].events", "required field is missing"),
    ("watchers", [{"user": "a@b.io", "email": {"recipients": {"to": ["c@d.io"]}}, "events": {}}],
     "watchers[0]", "exactly one of user, webhook or email (this one has user and email)"),
    ("watchers", [{"events": {"runtimeExceeded": 0}, "user": "a@b.io"}],
     "watchers[0].events.runtimeExceeded", "at least 1"),
    ("watchers", [{"events": {}, "webhook": {"name": "n", "url": "ftp://x.io/", "payload": ""}}],
     "watchers[0].webhook.url", "http:// or https://"),
    ("watchers", [{"events": {}, "webhook": {"name": "n", "url": "https://x.io/"}}],
     "watchers[0].webhook.payload", "required field is missing"),
    ("watchers", [{"events": {}, "email": {"recipients": {"to": []}}}],
     "watchers[0].email.recipients.to", "must not be empty"),
    ("steps.bad step", {"imageId": 1, "command": "x"}, "steps.bad step", "the step name"),
    (f"{S1}.type", "http", f"{S1}.type", "only 'standard' steps"),
    (f"{S1}.type", "batch", f"{S1}.type", "must be 'standard'"),
    (f"{S1}.imageId", DROP, f"{S1}.imageId", "required field is missing"),
    (f"{S1}.imageId", "123", f"{S1}.imageId", "whole number"),
    (f"{S1}.command", "   ", f"{S1}.command", "command is empty"),
    (f"{S1}.stepTimeout", 0, f"{S1}.stepTimeout", "at least 1"),
    (f"{S1}.stepTimeOut", 30, f"{S1}.stepTimeOut", "did you mean 'stepTimeout'"),
    (f"{S1}.clearImageCache", "true", f"{S1}.clearImageCache", "true or false"),
    (f"{S1}.resources.instanceTypeId", 0, f"{S1}.resources.instanceTypeId", "at least 1"),
    (f"{S1}.resources.storage", "ten", f"{S1}.resources.storage", "size in GB"),
    (f"{S1}.repository.url", "-uhack", f"{S1}.repository.url", "not a repository URL"),
    (f"{S1}.repository.url", "file:///etc", f"{S1}.repository.url", "scheme"),
    (f"{S1}.repository.branch", "main..x", f"{S1}.repository.branch", "not a branch name"),
    (f"{S1}.repository.token", "a token", f"{S1}.repository.token", "stored secret"),
    (f"{S1}.parameters.env", {"1X": "v"}, f"{S1}.parameters.env.1X", "not a variable name"),
    (f"{S1}.parameters.env", {"PORT": 8080}, f"{S1}.parameters.env.PORT", "expected a string"),
    (f"{S1}.parameters.env", [{"A": "1", "B": "2"}], f"{S1}.parameters.env", "item 0"),
    (f"{S1}.parameters.secrets", ["ok", "not ok"], f"{S1}.parameters.secrets[1]",
     "the secret name"),
    (f"{S1}.outputParameters.PARAM_1", "/etc/passwd", f"{S1}.outputParameters.PARAM_1",
     "relative path"),
    (f"{S1}.outputParameters.PARAM_1", "../x", f"{S1}.outputParameters.PARAM_1", "no '..'"),
    (f"{S2}.parents[0]", "prep", f"{S2}.parents[0]", 'unknown step "prep"'),
    (f"{S2}.parents[0]", "Step1", f"{S2}.parents[0]", 'did you mean "step1"'),
    (f"{S2}.parents[0]", "step2", f"{S2}.parents[0]", 'step "step2" cannot be its own parent'),
    (f"{S2}.executionParameters.conditional[0].condition", "eq",
     f"{S2}.executionParameters.conditional[0].condition", "'equals' or 'not-equals'"),
    (f"{S2}.executionParameters.conditional[0].stepName", "nope",
     f"{S2}.executionParameters.conditional[0].stepName", 'unknown step "nope"'),
    (f"{S2}.executionParameters.conditional[0].paramName", "PARAM_2",
     f"{S2}.executionParameters.conditional[0].paramName", "no output parameter 'PARAM_2'"),
    (f"{S2}.executionParameters.conditional[0].value", 5,
     f"{S2}.executionParameters.conditional[0].value", "expected a string"),
    (f"{S2}.executionParameters.parentStatus[0].condition", "any-of",
     f"{S2}.executionParameters.parentStatus[0].condition", "'all-of' or 'one-of'"),
    (f"{S2}.executionParameters.parentStatus[0].status", ["done"],
     f"{S2}.executionParameters.parentStatus[0].status[0]", "'success' or 'failure'"),
    (f"{S2}.executionParameters.parentStatus[0].parents", [],
     f"{S2}.executionParameters.parentStatus[0].parents", "must not be empty"),
    (f"{S2}.executionParameters.parentStatus[0].parents", ["step2"],
     f"{S2}.executionParameters.parentStatus[0].parents[0]", "cannot depend on its own status"),
    (f"{S2}.parameters.inherit", {"IN": "NOPE"}, f"{S2}.parameters.inherit.IN",
     "no parent step (direct or indirect) has an output parameter 'NOPE'"),
    ("metadata", {"allowConcurrentExecution": 1}, "metadata.allowConcurrentExecution",
     "true or false"),
    ("steps.step1.parameters.inherited", {}, f"{S1}.parameters.inherited",
     "did you mean 'inherit'"),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), BAD,
                         ids=[f"{b[0]}={str(b[1])[:24]}" for b in BAD])
def test_bad_body_names_the_field(path: str, value: object, field: str, words: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(changed(path, value))
    found = {d["field"]: d["message"] for d in caught.value.detail}
    assert field in found, found
    assert words in found[field], found[field]


def test_conditions_need_an_upstream_step() -> None:
    body = changed(f"{S2}.parents", [])  # step2's condition and parentStatus name step1
    with pytest.raises(DefinitionError) as caught:
        parse_definition(body)
    fields = [d["field"] for d in caught.value.detail]
    assert fields == [f"{S2}.executionParameters.conditional[0].stepName",
                      f"{S2}.executionParameters.parentStatus[0].parents[0]"]
    assert 'step "step1" is not a parent of "step2"' in caught.value.detail[0]["message"]


def test_a_grandparent_counts_as_upstream() -> None:
    body = changed("steps.step3", {"imageId": 1, "command": "x", "parents": ["step2"],
                                   "parameters": {"inherit": {"IN": "PARAM_1"}}})
    assert parse_definition(body).steps["step3"].parameters is not None


def test_every_problem_is_reported_not_just_the_first() -> None:
    body = changed("name", "bad name")
    body["retryOptions"] = {"numberOfRetries": 9, "duration": 500}
    body["steps"]["step2"]["parents"] = ["ghost"]
    body["triggers"] = [{"cron": "0 0 * *"}]
    with pytest.raises(DefinitionError) as caught:
        parse_definition(body)
    assert {d["field"] for d in caught.value.detail} >= {
        "name", "retryOptions.numberOfRetries", "retryOptions.duration", "triggers[0].cron",
        f"{S2}.parents[0]"}
    assert isinstance(caught.value, SpecError)
    assert str(caught.value).startswith("name: the workflow name")


def test_other_step_types_get_one_problem_each() -> None:
    body = changed(f"{S1}", {"type": "http", "method": "post", "url": "https://x.io"})
    with pytest.raises(DefinitionError) as caught:
        parse_definition(body)
    step1 = [d["field"] for d in caught.value.detail if d["field"].startswith(S1)]
    assert step1 == [f"{S1}.type"]


@pytest.mark.parametrize("data", [[], "x", None, 3])
def test_a_body_that_is_not_an_object(data: object) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(data)
    assert caught.value.detail[0]["field"] == ""
    assert "JSON object" in caught.value.detail[0]["message"]


# --- cycles ---------------------------------------------------------------------------------


def graph(parents: dict[str, list[str]]) -> dict[str, Any]:
    return {"name": "g", "steps": {n: {"imageId": 1, "command": "true", "parents": p}
                                   for n, p in parents.items()}}


def problems_of(body: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(body)
    return caught.value.detail


def test_a_three_step_cycle_is_named() -> None:
    detail = problems_of(graph({"a": ["c"], "b": ["a"], "c": ["b"], "d": []}))
    assert detail == [{"field": "steps.a.parents", "message":
                       "dependency cycle: a -> c -> b -> a (each step has the next as a parent)"}]


def test_two_cycles_and_an_unknown_parent_all_reported() -> None:
    detail = problems_of(graph({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c", "zz"]}))
    messages = {d["field"]: d["message"] for d in detail}
    assert messages["steps.d.parents[1]"] == 'unknown step "zz"'
    assert "a -> b -> a" in messages["steps.a.parents"]
    assert "c -> d -> c" in messages["steps.c.parents"]
    assert len(detail) == 3


def test_a_diamond_is_no_cycle() -> None:
    defn = parse_definition(graph({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c", "b"]}))
    assert defn.steps["d"].parent_names == ("b", "c")


# --- crontab weekdays (APScheduler 3.x reads 0 as Monday) ------------------------------------


def next_fires(expr: str, count: int) -> list[datetime]:
    trigger, now, out = cron_trigger(expr), datetime(2024, 1, 1, tzinfo=UTC), []
    previous = None
    for _ in range(count):
        now = trigger.get_next_fire_time(previous, now)
        out.append(now)
        previous, now = now, now.replace(second=1)
    return out


@pytest.mark.parametrize(("expr", "weekdays"), [
    ("0 0 * * 0", {"Sunday"}), ("0 0 * * 7", {"Sunday"}), ("0 0 * * sun", {"Sunday"}),
    ("0 0 * * 1-5", {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}),
    ("0 0 * * 5-7", {"Friday", "Saturday", "Sunday"}),
    ("0 0 * * */2", {"Sunday", "Tuesday", "Thursday", "Saturday"}),
    ("0 0 * * MON,wed", {"Monday", "Wednesday"}),
])
def test_crontab_weekday_numbers(expr: str, weekdays: set[str]) -> None:
    assert {d.strftime("%A") for d in next_fires(expr, 14)} == weekdays


def test_day_of_month_or_weekday_as_crontab_has_it() -> None:
    days = next_fires("0 0 1 * 1", 6)  # the 1st of the month, and every Monday
    assert [d.day for d in days] == [1, 8, 15, 22, 29, 1]  # 2024-01-01 is a Monday
    assert days[-1].month == 2
    both = next_fires("0 0 */10 * 1", 3)  # a day field starting with '*': both must hold
    assert [(d.month, d.day) for d in both] == [(1, 1), (3, 11), (4, 1)]
    assert {d.strftime("%A") for d in both} == {"Monday"}


# --- describe and patch ---------------------------------------------------------------------


def client_fold(described: dict[str, Any]) -> dict[str, Any]:
    """What peak-sdk 1.29's patch_workflow makes of describe's reply before it PUTs (its own
    loop, restated): imageName/imageVersion and None values dropped, an empty repository token
    removed, ``env`` folded from single-key objects into a map, the first trigger kept."""
    body: dict[str, Any] = {"name": described["name"], "tags": described["tags"],
                            "watchers": described["watchers"], "triggers": [], "steps": {}}
    triggers = described.get("triggers")
    if triggers and triggers[0].get("cron"):
        body["triggers"] = [{"cron": triggers[0]["cron"]}]
    elif triggers and triggers[0].get("webhook"):
        body["triggers"] = [{"webhook": True, "webhookPolicy": "preserve"}]
    for name, step in described["steps"].items():
        out = body["steps"][name] = {}
        for key, value in step.items():
            if key not in ("imageName", "imageVersion") and value is not None:
                out[key] = value
            if key == "repository" and not value.get("token", {}):
                out["repository"].pop("token", None)
            if key == "parameters" and "env" in value:
                env: dict[str, Any] = {}
                for item in value["env"]:
                    env.update(item)
                out["parameters"]["env"] = env
    return body


def test_describe_shapes_env_and_repository_for_the_client() -> None:
    described = describe_json(parse_definition(WEBHOOK[0]), webhook_id="4f1c0d7e-webhook")
    step1 = described["steps"]["step1"]
    assert step1["parameters"]["env"] == [{"key": "value"}]
    assert step1["repository"] == {"branch": "main", "token": "github",
                                   "url": "github.com/org/repo"}
    assert step1["type"] == "standard"
    assert described["triggers"] == [{"webhook": "4f1c0d7e-webhook"}]
    assert described["tags"] == [{"name": "foo"}, {"name": "bar"}]
    assert described["watchers"] == []
    bare = describe_json(parse_definition(graph({"a": []})))
    assert "repository" not in bare["steps"]["a"] and "parameters" not in bare["steps"]["a"]
    assert bare["triggers"] == [] and bare["tags"] == []


@pytest.mark.parametrize("body", [CRON[0], WEBHOOK[0], MANUAL[0], UPDATED[0]],
                         ids=["cron", "webhook", "manual", "update"])
def test_describe_then_the_clients_put_gives_the_same_definition(body: dict[str, Any]) -> None:
    defn = parse_definition(body)
    put = client_fold(describe_json(defn, webhook_id="0d9c2c55-1b7e-4e4b-9a43-3c9f0b7c1e10"))
    again = parse_definition(put)
    assert again.steps == defn.steps
    assert (again.name, again.tags) == (defn.name, defn.tags)
    assert (again.watchers or []) == (defn.watchers or [])
    assert [t.cron for t in again.triggers or []] == [t.cron for t in defn.triggers or []]


def test_describe_env_list_is_accepted_back_as_sent() -> None:
    defn = parse_definition(changed(f"{S1}.parameters.env", [{"A": "1"}, {"B": "2"}]))
    params = defn.steps["step1"].parameters
    assert params and params.env == {"A": "1", "B": "2"}


def test_seed_patch_body_onto_the_cron_workflow() -> None:
    existing = parse_definition(CRON[0])
    patched = apply_patch(existing, copy.deepcopy(PATCH_BODY[0]))
    assert patched.name == "updated-workflow"
    assert list(patched.steps) == ["stepName", "step1", "step2"]
    assert patched.steps["stepName"] == existing.steps["stepName"]
    step2 = patched.steps["step2"]
    assert step2.resources and step2.resources.instance_type_id == 22
    assert patched.watchers == parse_definition(PATCH_BODY[0]).watchers
    assert patched.retry_options == existing.retry_options  # not in the patch: kept
    assert patched.tags == existing.tags


def test_seed_patch_by_arguments_changes_only_the_named_steps() -> None:
    existing = parse_definition(UPDATED[0])
    patched = apply_patch(existing, {}, step_names=["step1"], flags={
        "name": "updated-workflow", "image_id": 100, "image_version_id": 100,
        "instance_type_id": 23, "storage": None})
    step1, step2 = patched.steps["step1"], patched.steps["step2"]
    assert (step1.image_id, step1.image_version_id) == (100, 100)
    assert step1.resources and step1.resources.model_dump(by_alias=True) == {
        "instanceTypeId": 23, "storage": "10GB"}
    assert step2 == existing.steps["step2"]
    everywhere = apply_patch(existing, {"steps": {"step1": {"command": "body"}}},
                             flags={"command": "flag", "branch": "dev"})
    assert {s.command for s in everywhere.steps.values()} == {"flag"}  # flags > body
    assert {s.repository.branch for s in everywhere.steps.values() if s.repository} == {"dev"}


def test_patch_merges_objects_and_replaces_lists_env_and_top_level_keys() -> None:
    existing = parse_definition(WEBHOOK[0])
    patched = apply_patch(existing, {
        "retryOptions": {"numberOfRetries": 1},
        "steps": {"step1": {"parameters": {"env": {"NEW": "1"}}, "resources": {"storage": "5GB"},
                            "stepTimeout": None, "runConfiguration": {
                                "skipConfiguration": {"skip": True}}},
                  "step2": {"parents": [], "executionParameters": None}}})
    step1 = patched.steps["step1"]
    assert step1.parameters and step1.parameters.env == {"NEW": "1"}  # env replaces
    assert step1.parameters.secrets == ["secret-1", "secret-2"]  # its object merges
    assert step1.resources and step1.resources.instance_type_id == 23
    assert step1.resources.storage == "5GB"
    assert step1.step_timeout is None  # null removes
    run = step1.run_configuration
    assert run and run.retry_options and run.retry_options.number_of_retries == 3
    assert run.skip_configuration and run.skip_configuration.skip is True
    assert patched.steps["step2"].parents == []
    assert patched.retry_options and patched.retry_options.exit_codes is None  # replaced
    assert patched.triggers == existing.triggers


def test_patch_that_makes_a_cycle_or_names_a_missing_step_is_refused() -> None:
    existing = parse_definition(WEBHOOK[0])
    with pytest.raises(DefinitionError) as caught:
        apply_patch(existing, {"steps": {"step1": {"parents": ["step2"]}}})
    assert caught.value.detail[0]["field"] == "steps.step1.parents"
    assert "step1 -> step2 -> step1" in caught.value.detail[0]["message"]
    with pytest.raises(DefinitionError) as caught:
        apply_patch(existing, {}, flags={"image_id": 1}, step_names=["step9"])
    assert caught.value.detail == [{"field": "stepNames[0]", "message": 'unknown step "step9"'}]
    with pytest.raises(DefinitionError) as caught:
        apply_patch(existing, {}, flags={"imageId": 1})
    assert caught.value.detail[0]["field"] == "imageId"
    with pytest.raises(DefinitionError) as caught:
        apply_patch(existing, {"steps": {"step3": {"command": "x"}}})  # a new step, incomplete
    assert caught.value.detail[0]["field"] == "steps.step3.imageId"


def test_definitions_are_frozen_values() -> None:
    defn = parse_definition(MANUAL[0])
    assert isinstance(defn, Definition)
    with pytest.raises(ValueError, match="frozen"):
        defn.name = "x"
    assert parse_definition(defn.to_body()) == defn
