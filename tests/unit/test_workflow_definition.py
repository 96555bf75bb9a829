"""Workflow definitions: what is accepted, what is refused and how the refusal reads, how
references resolve, and when schedules fire."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from libs.common.errors import InvalidArgument
from libs.common.references import references, resolve
from services.orchestrator.cron import cron_matches, next_fire
from services.orchestrator.definition import (
    RetrySpec,
    StepDef,
    WorkflowDef,
    dump_definition,
    load_definition,
    parse_definition,
)
from services.orchestrator.references import truthy

TYPES = {"echo", "webhook.deliver"}
EXAMPLE: dict[str, Any] = {
    "name": "signup",
    "timeout_s": 600,
    "steps": [
        {"name": "profile", "type": "echo", "input": {"user": {"$ref": "input.user"}}},
        {
            "name": "avatars", "type": "echo", "for_each": {"$ref": "input.images"},
            "input": {"img": {"$ref": "item"}},
        },
        {
            "name": "welcome", "type": "webhook.deliver", "depends_on": ["profile", "avatars"],
            "input": {
                "url": {"$ref": "input.hook"}, "body": {"n": {"$ref": "steps.avatars.output"}},
            },
            "retry": {"max_attempts": 5, "initial_backoff_s": 1, "max_backoff_s": 60},
            "timeout_s": 30, "fallback": "echo",
        },
        {"name": "vip", "type": "echo", "depends_on": ["profile"], "when": {"$ref": "input.vip"}},
    ],
    "on_failure": {"name": "notify", "type": "echo", "input": {"failed": {"$ref": "error"}}},
    "triggers": ["task.dead_lettered"],
    "schedule": "*/5 * * * *",
}  # fmt: skip


def _parse(doc: Any, known_types: set[str] | None = TYPES, name: str = "flow") -> WorkflowDef:
    return parse_definition(name, json.dumps(doc).encode(), known_types)


def _flow(*steps: Any, **workflow: Any) -> dict[str, Any]:
    return {"steps": list(steps), **workflow}


def _echo(name: str, **step: Any) -> dict[str, Any]:
    return {"name": name, "type": "echo", **step}


def _refused(doc: Any, *fragments: str, known_types: set[str] | None = TYPES) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _parse(doc, known_types)
    for fragment in fragments:
        assert fragment in str(caught.value)


# --- The example ----------------------------------------------------------------------------


def test_the_example_parses_from_json() -> None:
    defn = parse_definition("signup", json.dumps(EXAMPLE).encode(), TYPES)
    assert [s.name for s in defn.steps] == ["profile", "avatars", "welcome", "vip"]
    welcome = defn.step("welcome")
    assert welcome.depends_on == ("profile", "avatars")
    assert welcome.retry == RetrySpec(5, 1.0, 60.0)
    assert (welcome.timeout_s, welcome.fallback) == (30.0, "echo")
    assert defn.step("avatars").for_each == {"$ref": "input.images"}
    assert defn.step("vip").when == {"$ref": "input.vip"}
    assert defn.on_failure is not None and defn.on_failure.name == "notify"
    assert defn.timeout_s == 600.0
    assert defn.triggers == ("task.dead_lettered",)
    assert defn.schedule == "*/5 * * * *"


def test_the_example_parses_from_yaml_to_the_same_definition() -> None:
    from_yaml = parse_definition("signup", yaml.safe_dump(EXAMPLE).encode(), TYPES)
    assert from_yaml == parse_definition("signup", json.dumps(EXAMPLE).encode(), TYPES)


def test_the_graph_helpers() -> None:
    defn = _parse(EXAMPLE, name="signup")
    assert defn.roots() == ["profile", "avatars"]
    assert defn.dependents("profile") == ["welcome", "vip"]
    assert defn.ancestors("welcome") == {"profile", "avatars"}
    assert defn.ancestors("profile") == set()
    assert defn.order() == ["profile", "avatars", "welcome", "vip"]
    assert defn.step("notify") == defn.on_failure
    with pytest.raises(InvalidArgument, match='no step "nope"'):
        defn.step("nope")


def test_order_puts_dependencies_first_and_keeps_definition_order_otherwise() -> None:
    defn = _parse(
        _flow(
            _echo("c", depends_on=["b"]), _echo("a"), _echo("b", depends_on=["a"]), _echo("d"),
            _echo("e", depends_on=["c", "a"]),
        )
    )  # fmt: skip
    assert defn.order() == ["a", "b", "c", "d", "e"]
    assert defn.ancestors("e") == {"a", "b", "c"}


def test_dump_is_canonical_json_and_loads_back_to_the_same_definition() -> None:
    defn = _parse(EXAMPLE, name="signup")
    dumped = dump_definition(defn)
    assert dumped == json.dumps(json.loads(dumped), sort_keys=True, separators=(",", ":")).encode()
    assert json.loads(dumped)["steps"][2]["retry"] == {
        "max_attempts": 5, "initial_backoff_s": 1.0, "max_backoff_s": 60.0,
    }  # fmt: skip
    assert load_definition("signup", dumped) == defn
    assert dump_definition(load_definition("signup", dumped)) == dumped


def test_loading_a_stored_definition_does_not_check_types_again() -> None:
    dumped = dump_definition(_parse(EXAMPLE, name="signup"))
    assert load_definition("signup", dumped).step("welcome").type == "webhook.deliver"
    with pytest.raises(InvalidArgument):
        parse_definition("signup", dumped, {"echo"})


def test_unicode_round_trips() -> None:
    doc = _flow(_echo("a", input={"text": "héllo 😀 \u0085"}))
    defn = _parse(doc)
    assert load_definition("flow", dump_definition(defn)) == defn


def test_defaults() -> None:
    step = _parse(_flow({"name": "a", "type": "echo"})).steps[0]
    assert step == StepDef(name="a", type="echo", input={})
    partial = _parse(_flow(_echo("a", retry={"max_attempts": 7}))).steps[0]
    assert partial.retry == RetrySpec(7, 1.0, 60.0)


def test_types_are_not_checked_without_known_types() -> None:
    assert _parse(_flow({"name": "a", "type": "anything"}), known_types=None).steps[0].type


# --- Refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"[1, 2]", "must be an object"),
        (b"", "must be an object"),
        (b"steps: [a\n  b: {", "neither JSON nor YAML"),
        (b"steps:\n  - name: a\n    type: echo\n    input: {day: 2024-01-01}", "quote it"),
        (b"steps:\n  - name: a\n    type: echo\n    input: {1: x}", "not a string"),
        (b'{"steps": [{"name": "a", "type": "echo", "input": NaN}]}', "not a JSON number"),
        (b"[" * 200 + b"]" * 200, "nested"),
    ],
)
def test_documents_that_are_not_json_objects_are_refused(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        parse_definition("flow", raw, None)


def test_yaml_alias_bombs_are_refused() -> None:
    # Ten of each level: 10**8 values from a few hundred bytes.
    bomb = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    for level in range(1, 9):
        bomb += f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]\n"
    with pytest.raises(InvalidArgument, match="too large"):
        parse_definition("flow", bomb.encode(), None)
    with pytest.raises(InvalidArgument, match="nested"):
        parse_definition("flow", b"steps: &s [*s]", None)


def test_a_definition_over_256_kib_is_refused() -> None:
    big = _flow(_echo("a", input={"pad": "x" * 256 * 1024}))
    _refused(big, "256 KiB")


def test_unknown_keys_are_refused_with_a_hint() -> None:
    _refused(_flow(_echo("a"), tmeout_s=5), 'workflow "flow"', '"tmeout_s"', 'mean "timeout_s"')
    _refused(_flow(_echo("a", depend_on=["b"])), 'step "a"', '"depend_on"', 'mean "depends_on"')
    _refused(_flow(_echo("a", retry={"attempts": 2})), 'step "a" retry', '"attempts"')


def test_workflow_names() -> None:
    doc = _flow(_echo("a"))
    assert parse_definition("a.b-c_9", json.dumps(doc).encode(), None).name == "a.b-c_9"
    for bad in ("", "Upper", "-lead", "x" * 64, "sp ace"):
        with pytest.raises(InvalidArgument, match="workflow name"):
            parse_definition(bad, json.dumps(doc).encode(), None)
    with pytest.raises(InvalidArgument, match='names itself "other"'):
        parse_definition("flow", json.dumps({**doc, "name": "other"}).encode(), None)


def test_step_counts() -> None:
    _refused(_flow(), "non-empty list")
    _refused({"steps": {"a": {}}}, "non-empty list")
    _refused(_flow(*[_echo(f"s{i}") for i in range(501)]), "501 steps", "500")
    assert len(_parse(_flow(*[_echo(f"s{i}") for i in range(500)])).steps) == 500


def test_step_names() -> None:
    _refused(_flow({"type": "echo"}), "step #1", "name null")
    _refused(_flow(_echo("a"), _echo("b.c")), "step #2", '"b.c"')
    _refused(_flow(_echo("a" * 65)), "step #1")
    _refused(_flow(_echo("a"), _echo("a")), "step #2", 'already named "a"')
    _refused(_flow(_echo("a"), on_failure=_echo("a")), "on_failure", 'already named "a"')
    _refused(_flow("a"), "step #1 must be an object")


def test_step_types() -> None:
    _refused(_flow({"name": "x"}), 'step "x": type must be a non-empty string')
    _refused(_flow({"name": "x", "type": ""}), 'step "x": type')
    _refused(_flow({"name": "x", "type": "foo"}), 'step "x": no agent serves type "foo"')
    _refused(_flow(_echo("x", fallback="foo")), 'step "x": no agent serves type "foo"')
    _refused(
        _flow(_echo("a"), on_failure={"name": "n", "type": "foo"}),
        'on_failure step "n": no agent serves type "foo"',
    )


def test_depends_on() -> None:
    _refused(
        _flow(_echo("profile"), _echo("welcome", depends_on=["profil"])),
        'step "welcome": depends_on names unknown step "profil"',
    )
    _refused(_flow(_echo("a", depends_on=["a"])), 'step "a": depends on itself')
    _refused(_flow(_echo("a"), _echo("b", depends_on=["a", "a"])), 'step "b"', '"a" twice')
    _refused(_flow(_echo("a", depends_on="b"), _echo("b")), 'step "a": depends_on must be a list')
    _refused(_flow(_echo("a"), on_failure=_echo("n", depends_on=["a"])), "cannot have depends_on")


def test_cycles_are_refused_and_named() -> None:
    doc = _flow(
        _echo("start"), _echo("a", depends_on=["start", "c"]), _echo("b", depends_on=["a"]),
        _echo("c", depends_on=["b"]), _echo("d", depends_on=["c"]),
    )  # fmt: skip
    with pytest.raises(InvalidArgument) as caught:
        _parse(doc)
    message = str(caught.value)
    assert "cycle" in message
    assert '"a" -> "c" -> "b" -> "a"' in message
    assert "start" not in message and '"d"' not in message


def test_retry_limits() -> None:
    for retry, fragment in [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"initial_backoff_s": -1}, "initial_backoff_s"),
        ({"max_backoff_s": "60"}, "max_backoff_s"),
        ({"initial_backoff_s": 90}, "initial_backoff_s (90) is above max_backoff_s (60)"),
        ([3], "retry must be an object"),
    ]:
        _refused(_flow(_echo("x", retry=retry)), 'step "x"', fragment)
    assert _parse(_flow(_echo("x", retry={"max_attempts": 100}))).steps[0].retry


def test_timeouts() -> None:
    for bad in (0, -5, 86_401, "30", True):
        _refused(_flow(_echo("x", timeout_s=bad)), 'step "x": timeout_s')
    assert _parse(_flow(_echo("x", timeout_s=86_400))).steps[0].timeout_s == 86_400.0
    for bad in (0, 30 * 86_400 + 1):
        _refused(_flow(_echo("x"), timeout_s=bad), 'workflow "flow": timeout_s')
    assert _parse(_flow(_echo("x"), timeout_s=30 * 86_400)).timeout_s == 30 * 86_400.0


def test_queue_when_and_for_each_shapes() -> None:
    _refused(_flow(_echo("x", queue="")), 'step "x": queue')
    assert _parse(_flow(_echo("x", queue="bulk"))).steps[0].queue == "bulk"
    _refused(_flow(_echo("x", for_each=[1, 2])), 'step "x": for_each must be a {"$ref"')
    _refused(_flow(_echo("x", when={"a": 1})), 'step "x": when must be')
    _refused(_flow(_echo("x", when=[1])), 'step "x": when must be')
    assert _parse(_flow(_echo("x", when=False))).steps[0].when is False
    _refused(_flow(_echo("a"), on_failure=_echo("n", for_each={"$ref": "input.x"})), "for_each")


def test_triggers_and_schedule() -> None:
    _refused(_flow(_echo("a"), triggers=["Task.Failed"]), "trigger", "task.dead_lettered")
    _refused(_flow(_echo("a"), triggers=["task"]), "trigger")
    _refused(_flow(_echo("a"), triggers="task.failed"), "triggers must be a list")
    _refused(_flow(_echo("a"), triggers=["task.failed", "task.failed"]), "twice")
    _refused(_flow(_echo("a"), schedule="61 * * * *"), 'workflow "flow"', "minute 61")
    _refused(_flow(_echo("a"), schedule=5), "schedule must be")
    assert _parse(_flow(_echo("a"), schedule=" 0  9 * * 1-5 ")).schedule == "0 9 * * 1-5"


# --- References -------------------------------------------------------------------------------


def test_a_step_may_refer_to_its_ancestors_only() -> None:
    chain = [_echo("a"), _echo("b", depends_on=["a"]), _echo("side")]
    deep = _echo("c", depends_on=["b"], input={"x": {"$ref": "steps.a.output.user.0"}})
    assert _parse(_flow(*chain, deep)).step("c").input == {"x": {"$ref": "steps.a.output.user.0"}}
    _refused(
        _flow(*chain, _echo("c", depends_on=["b"], input={"x": {"$ref": "steps.side.output"}})),
        'step "c": refers to steps.side, which is not among its dependencies',
    )
    _refused(
        _flow(*chain, _echo("c", depends_on=["b"], when={"$ref": "steps.side.output"})),
        'step "c": refers to steps.side',
    )
    _refused(
        _flow(*chain, _echo("c", input=[{"$ref": "steps.ghost.output"}])),
        'step "c": refers to steps.ghost, which is not a step',
    )
    _refused(_flow(*chain, _echo("c", input={"$ref": "steps.a"})), "steps.<name>.output")


def test_item_only_in_the_input_of_a_for_each_step() -> None:
    _refused(_flow(_echo("x", input={"i": {"$ref": "item"}})), 'step "x": "item" can only')
    _refused(
        _flow(_echo("x", for_each={"$ref": "input.l"}, when={"$ref": "item.ok"})),
        'step "x": "item" can only',
    )
    _refused(_flow(_echo("x", for_each={"$ref": "item"})), 'step "x": for_each must name')
    ok = _echo("x", for_each={"$ref": "input.l"}, input={"i": {"$ref": "item.id"}})
    assert _parse(_flow(ok)).steps[0].for_each == {"$ref": "input.l"}


def test_error_only_in_on_failure_which_may_refer_to_any_step() -> None:
    _refused(_flow(_echo("x", input={"$ref": "error"})), 'step "x": "error" can only')
    failure = _echo("n", input={"e": {"$ref": "error"}, "b": {"$ref": "steps.b.output.x"}})
    defn = _parse(_flow(_echo("a"), _echo("b"), on_failure=failure))
    assert defn.on_failure is not None and defn.on_failure.depends_on == ()
    _refused(
        _flow(_echo("a"), on_failure=_echo("n", input={"$ref": "steps.zz.output"})),
        'on_failure step "n": refers to steps.zz, which is not a step',
    )


def test_malformed_references_are_refused() -> None:
    _refused(_flow(_echo("x", input={"$ref": "input", "y": 1})), 'step "x": input', "exactly one")
    _refused(_flow(_echo("x", input={"$ref": 3})), 'step "x"', "holding a string")
    _refused(_flow(_echo("x", input={"$ref": "input..a"})), 'step "x"', "empty part")
    _refused(_flow(_echo("x", input={"$ref": "inputs.a"})), 'step "x": reference inputs.a')


def test_references_lists_them_in_document_order() -> None:
    template = {"a": [{"$ref": "input.x"}, {"b": {"$ref": "steps.s.output"}}], "c": 1}
    assert references(template) == ["input.x", "steps.s.output"]
    assert references("plain") == []


def test_resolve_replaces_nested_references_and_indexes_lists() -> None:
    context = {
        "input": {"user": {"id": 7, "tags": ["a", "b"]}},
        "steps": {"profile": {"output": {"emails": [{"addr": "x@y"}]}}},
        "item": 3,
        "error": "boom",
    }
    template = {
        "id": {"$ref": "input.user.id"},
        "list": [
            {"$ref": "input.user.tags.1"},
            {"deep": {"$ref": "steps.profile.output.emails.0.addr"}},
        ],
        "item": {"$ref": "item"},
        "error": {"$ref": "error"},
        "literal": {"keep": [1, "two", None]},
    }
    assert resolve(template, context) == {
        "id": 7,
        "list": ["b", {"deep": "x@y"}],
        "item": 3,
        "error": "boom",
        "literal": {"keep": [1, "two", None]},
    }


def test_resolve_copies_and_never_follows_references_found_in_values() -> None:
    tags = ["a"]
    context = {"input": {"tags": tags, "sneaky": {"$ref": "error"}}}
    resolved = resolve({"t": {"$ref": "input.tags"}, "s": {"$ref": "input.sneaky"}}, context)
    resolved["t"].append("b")
    assert tags == ["a"]
    assert resolved["s"] == {"$ref": "error"}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("steps.profile.output.user.id", 'reference steps.profile.output.user.id: no key "id"'),
        ("steps.other.output", 'no key "other"'),
        ("input.list.5", "no index 5 in a list of 2 items"),
        ("input.list.x", 'cannot look up "x" in a list'),
        ("input.name.first", 'cannot look up "first" in "ann"'),
    ],
)
def test_resolve_refuses_references_to_missing_values(ref: str, message: str) -> None:
    context = {
        "input": {"list": [1, 2], "name": "ann"},
        "steps": {"profile": {"output": {"user": {"name": "ann"}}}},
    }
    with pytest.raises(InvalidArgument) as caught:
        resolve({"x": {"$ref": ref}}, context)
    assert message in str(caught.value)


def test_digit_keys_of_objects_are_keys() -> None:
    assert resolve({"$ref": "input.0"}, {"input": {"0": "zero"}}) == "zero"


def test_truthy() -> None:
    falsy: list[Any] = [None, False, 0, 0.0, "", [], {}]
    assert not any(truthy(value) for value in falsy)
    assert all(truthy(value) for value in (True, 1, -1, 0.5, "no", "false", [0], {"a": None}))


# --- Cron -------------------------------------------------------------------------------------


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "when", "fires"),
    [
        ("* * * * *", "2025-03-04 05:06:59", True),
        ("*/15 * * * *", "2025-03-04 05:45:00", True),
        ("*/15 * * * *", "2025-03-04 05:50:00", False),
        ("0 9-17 * * *", "2025-03-04 17:00:00", True),
        ("0 9-17 * * *", "2025-03-04 18:00:00", False),
        ("0 9-17/4 * * *", "2025-03-04 13:00:00", True),
        ("0 9-17/4 * * *", "2025-03-04 11:00:00", False),
        ("5,35 0,12 * * *", "2025-03-04 12:35:00", True),
        ("0 0 1 1 *", "2025-01-01 00:00:00", True),
        ("0 0 * * 0", "2025-03-02 00:00:00", True),  # a Sunday
        ("0 0 * * 0", "2025-03-03 00:00:00", False),
        # Both day fields restricted: either one is enough.
        ("0 0 13 * 5", "2025-06-13 00:00:00", True),  # Friday the 13th
        ("0 0 13 * 5", "2025-06-06 00:00:00", True),  # a Friday
        ("0 0 13 * 5", "2025-05-13 00:00:00", True),  # a Tuesday, the 13th
        ("0 0 13 * 5", "2025-06-12 00:00:00", False),
        # A day field starting with "*" leaves the other alone in charge.
        ("0 0 */2 * 1", "2025-03-03 00:00:00", True),  # Monday the 3rd
        ("0 0 */2 * 1", "2025-03-10 00:00:00", False),  # Monday the 10th
    ],
)
def test_cron_matches(expr: str, when: str, fires: bool) -> None:
    assert cron_matches(expr, _at(when)) is fires


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/15 * * * *", "2025-03-04 05:06:07", "2025-03-04 05:15:00"),
        ("*/15 * * * *", "2025-03-04 05:15:00", "2025-03-04 05:30:00"),
        ("*/15 * * * *", "2025-03-04 23:59:00", "2025-03-05 00:00:00"),
        ("30 9 * * 1-5", "2025-03-07 10:00:00", "2025-03-10 09:30:00"),  # Friday → Monday
        ("0 0 31 * *", "2025-04-01 00:00:00", "2025-05-31 00:00:00"),  # April has no 31st
        ("0 0 1 * *", "2025-12-15 08:00:00", "2026-01-01 00:00:00"),
        ("0 12 29 2 *", "2025-03-01 00:00:00", "2028-02-29 12:00:00"),
        ("0 0 13 * 5", "2025-06-07 00:00:00", "2025-06-13 00:00:00"),
        ("0 0 13 * 5", "2025-06-13 00:00:00", "2025-06-20 00:00:00"),
        ("0,30 8,20 * 6-8 *", "2025-01-01 00:00:00", "2025-06-01 08:00:00"),
    ],
)
def test_next_fire(expr: str, after: str, expected: str) -> None:
    fire = next_fire(expr, _at(after))
    assert fire == _at(expected)
    assert cron_matches(expr, fire)


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("* * *", "needs 5 fields"),
        ("* * * * * *", "needs 5 fields"),
        ("* 24 * * *", "hour 24"),
        ("* * 0 * *", "day-of-month 0"),
        ("* * * 13 *", "month 13"),
        ("* * * * 7", "day-of-week 7"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "step"),
        ("5/10 * * * *", "step needs"),
        ("a * * * *", "not a number"),
        ("1,,2 * * * *", "not a number"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_bad_cron_expressions_are_refused(expr: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        next_fire(expr, _at("2025-01-01 00:00:00"))
    with pytest.raises(InvalidArgument, match=fragment):
        cron_matches(expr, _at("2025-01-01 00:00:00"))


def test_chain_links_are_steps_that_follow_one_single_task_step_from_its_result_alone() -> None:
    """The steps a task agent may start itself, as continuations of the task before."""
    defn = _parse(
        _flow(
            _echo("a", input={"x": {"$ref": "input.x"}}),
            _echo("b", depends_on=["a"], input={"y": {"$ref": "steps.a.output.y"}, "n": 1}),
            _echo("c", depends_on=["a"], input={"all": {"$ref": "steps.a.output"}}),
            _echo("maybe", depends_on=["a"], when={"$ref": "input.x"}),
            _echo("each", depends_on=["a"], for_each={"$ref": "steps.a.output.list"}),
            _echo("both", depends_on=["b", "c"]),
            _echo("after_each", depends_on=["each"], input={"n": {"$ref": "steps.each.output"}}),
            _echo("reads_b", depends_on=["both"], input={"y": {"$ref": "steps.b.output"}}),
        )
    )
    assert [s.name for s in defn.chained_after("a")] == ["b", "c"]
    assert defn.chained_after("each") == ()
    assert defn.chained_after("both") == ()
    assert sorted(defn.chained_steps()) == ["b", "c"]
