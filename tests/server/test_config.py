"""Settings are strict: a value of the wrong type is an error that names the setting, never a coercion."""

from __future__ import annotations

import asyncio
import dataclasses
import typing
from typing import Any, Literal

import pytest
from lsprotocol import types

from midline.server.config import Config, ConfigError, camel

from ..lsp_client import running_server, status

# Wrong values for each type a setting has; None is wrong unless the setting is nullable.
BAD: dict[Any, list[Any]] = {
    bool: ["false", "true", 0, 1, None, [], {}],
    int: [12.9, 12.0, "12", True, False, None, [1], float("nan")],
    float: ["0.5", True, None, [], {}, float("inf")],
    str: [5, 1.5, False, [], {}],
    dict: [5, "x", True, [], None],  # a sub-section
    "enable": [{"python": "false"}, {"python": 0}, {"python": 1}, {"python": None}, {"python": [True]}, "python",
               ["python"], None],
}
GOOD: dict[Any, list[Any]] = {bool: [True, False], int: [64, 2048], float: [0, 0.5, 1], str: ["/models/x"],
                              "enable": [{"python": False, "*": True}]}

# Settings whose own range rules limit which good values of its type fit.
RANGE = {
    "midline.topP": [0.5, 1], "midline.context.prefixShare": [0.5, 1], "midline.maxNewTokens": [64, 2048],
    "midline.actions.maxNewTokens": [64, 2048], "midline.candidates": [1, 8], "midline.automaticCandidates": [1, 8],
    "midline.actions.attempts": [1, 8], "midline.actions.candidates": [1, 8],
}


def settings(cls: type = Config, prefix: str = "midline") -> list[tuple[str, Any]]:
    """(full camelCase key, its type) for every setting and sub-section, depth first."""
    out = []
    for f in dataclasses.fields(cls):
        key, type_ = f"{prefix}.{camel(f.name)}", typing.get_type_hints(cls)[f.name]
        out.append((key, type_))
        if dataclasses.is_dataclass(type_):
            out += settings(type_, key)
    return out


def kind(key: str, type_: Any) -> tuple[Any, bool]:
    """The BAD/GOOD row of a setting's type, and whether it is nullable."""
    args = typing.get_args(type_)
    nullable = type(None) in args
    if nullable:
        (type_,) = [arg for arg in args if arg is not type(None)]
    if key == "midline.enable":
        return "enable", nullable
    if dataclasses.is_dataclass(type_):
        return dict, nullable
    if typing.get_origin(type_) is Literal:
        return Literal, nullable
    return type_, nullable


def nested(key: str, value: Any) -> dict[str, Any]:
    """`{"context": {"budget": value}}` for `midline.context.budget`."""
    *parents, last = key.split(".")[1:]
    tree: dict[str, Any] = {last: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


def bad_values(key: str, type_: Any) -> list[Any]:
    row, nullable = kind(key, type_)
    if row is Literal:
        return ["tpu", "", "AUTO", 1, True, [], *([] if nullable else [None])]
    return [value for value in BAD[row] if not (nullable and value is None)]


def good_values(key: str, type_: Any) -> list[Any]:
    row, nullable = kind(key, type_)
    if row is dict:
        return [{}]
    values = list(typing.get_args(type_)) if row is Literal else RANGE.get(key, GOOD[row])
    return values + ([None] if nullable else [])


BAD_CASES = [(key, value) for key, type_ in settings() for value in bad_values(key, type_)]
FLOATS = {key for key, type_ in settings() if kind(key, type_)[0] is float}
GOOD_CASES = [(key, value) for key, type_ in settings() for value in good_values(key, type_)
              if key != "midline.backend.kind"]


def test_the_table_knows_every_type_of_setting():
    for key, type_ in settings():
        row, _ = kind(key, type_)
        assert row is Literal or row in BAD, f"{key}: add bad values for {type_}"


@pytest.mark.parametrize(("key", "value"), BAD_CASES, ids=[f"{k}={v!r}" for k, v in BAD_CASES])
def test_a_wrong_type_is_an_error_naming_the_setting(key, value):
    base = Config(max_lines=7)
    with pytest.raises(ConfigError) as error:
        Config.from_json(nested(key, value), base=base)
    message = str(error.value)
    if key == "midline.enable" and isinstance(value, dict):
        key += ".python"
    assert f"{key} must be " in message and "; got " in message, message
    assert base.max_lines == 7 and base == Config(max_lines=7)


@pytest.mark.parametrize(("key", "value"), GOOD_CASES, ids=[f"{k}={v!r}" for k, v in GOOD_CASES])
def test_a_right_value_passes(key, value):
    config = Config.from_json(nested(key, value))
    tree: Any = config.to_json()
    for part in key.split(".")[1:]:
        tree = tree[part]
    if isinstance(value, dict):
        assert value.items() <= tree.items()
    else:
        assert tree == value and type(tree) is (float if isinstance(value, int) and key in FLOATS else type(value))



@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"trustRemoteCode": "false"}, 'midline.trustRemoteCode must be true or false; got "false"'),
        ({"enable": {"python": "false"}}, 'midline.enable.python must be true or false; got "false"'),
        ({"maxLines": 12.9}, "midline.maxLines must be an integer; got 12.9"),
        ({"device": "tpu"}, 'midline.device must be one of "auto", "cuda", "cpu"; got "tpu"'),
        ({"fimFormat": 3}, "midline.fimFormat must be a string or null; got 3"),
        ({"context": {"budget": 8}}, "midline.context.budget must be at least 16; got 8"),
        ({"topP": 1.5}, "midline.topP must be in (0, 1]; got 1.5"),
        ({"backend": {"kind": "openai"}},
         "midline.backend.url must be an http:// or https:// URL for backend.kind openai; got null"),
        ({"maxNewToken": 5}, "midline.maxNewToken is not a setting (did you mean midline.maxNewTokens?)"),
        ({"context": 5}, "midline.context must be an object; got 5"),
    ],
)
def test_messages_say_what_to_fix(settings_, message):
    with pytest.raises(ConfigError) as error:
        Config.from_json(settings_)
    assert str(error.value) == message


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        Config.from_json({"trustRemoteCode": 1, "context": {"crossFile": "no", "budget": 1.5}})
    message = str(error.value)
    for key in ("midline.trustRemoteCode", "midline.context.crossFile", "midline.context.budget"):
        assert key in message


def test_settings_are_laid_over_the_previous_ones():
    base = Config.from_json({"maxLines": 3, "enable": {"python": False}, "context": {"budget": 256}})
    config = Config.from_json({"temperature": 1, "enable": {"go": True}, "context": {"crossFile": False}}, base=base)
    assert (config.max_lines, config.temperature) == (3, 1.0)
    assert (config.context.budget, config.context.cross_file) == (256, False)
    assert config.enable["python"] is False and config.enable["go"] is True
    assert Config.from_json(config.to_json()) == config
    assert Config.from_json(None, base=base) is base


@pytest.mark.parametrize("data", [[], "x", 5])
def test_the_section_must_be_an_object(data):
    with pytest.raises(ConfigError, match="midline settings must be an object"):
        Config.from_json(data)


@pytest.mark.asyncio
@pytest.mark.e2e
async def test_the_server_reports_a_wrong_type_and_keeps_its_settings(tmp_path):
    """Over the real server: `"trustRemoteCode": "false"` is shown as an error, and nothing else in that
    update (here `model`, which `midline.status` reports) is taken either."""
    model = str(tmp_path / "no-model")
    async with running_server({"model": model}, tmp_path) as (client, _):
        assert (await status(client))["model"] == model
        client.messages.clear()
        bad = {"trustRemoteCode": "false", "model": str(tmp_path / "other")}
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"midline": bad}))
        for _ in range(200):
            errors = [m.message for m in client.messages if "trustRemoteCode" in m.message]
            if errors:
                break
            await asyncio.sleep(0.02)
        assert errors and 'midline.trustRemoteCode must be true or false; got "false"' in errors[0]
        assert (await status(client))["model"] == model


@pytest.mark.parametrize("key", ["candidates", "automaticCandidates"])
@pytest.mark.parametrize("value", [0, 9])
def test_candidates_are_counted_from_one_to_eight(key, value):
    with pytest.raises(ConfigError, match=rf"midline\.{key}.*in 1\.\.8"):
        Config.from_json({key: value})
