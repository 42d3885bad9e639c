"""Bad runbooks are refused before anything runs, naming the file, the line and the reason; parameters are typed."""
from __future__ import annotations

from pathlib import Path

import pytest

from cutover.runbook.actions import ActionRegistry, register_builtins
from cutover.runbook.loader import RunbookError, bind_params, load_runbook
from cutover.runbook.refs import RefError, resolve

RUNBOOKS = Path(__file__).resolve().parents[1] / "runbooks"
BAD = RUNBOOKS / "bad"


@pytest.fixture()
def registry() -> ActionRegistry:
    return register_builtins(ActionRegistry())


def refused(path: Path, registry: ActionRegistry) -> RunbookError:
    with pytest.raises(RunbookError) as info:
        load_runbook(path, registry)
    assert str(info.value).startswith(f"{path}:{info.value.line}: "), str(info.value)
    return info.value


def test_unknown_action_is_refused_with_its_line(registry):
    err = refused(BAD / "unknown_action.yaml", registry)
    assert err.line == 8 and "unknown action 'teleport'" in err.reason and "wait" in err.reason


def test_reference_to_a_later_step_is_refused_with_its_line(registry):
    err = refused(BAD / "later_step_ref.yaml", registry)
    assert err.line == 7 and "${steps.second.count}" in err.reason and "later step" in err.reason


def test_reference_to_an_undeclared_parameter_is_refused_with_its_line(registry):
    err = refused(BAD / "unknown_param_ref.yaml", registry)
    assert err.line == 9 and "${params.host}" in err.reason and "declared: site" in err.reason


def test_duplicate_step_id_is_refused_at_the_second_one(registry):
    err = refused(BAD / "duplicate_id.yaml", registry)
    assert err.line == 8 and "duplicate step id 'freeze'" in err.reason


def test_schema_error_names_the_field_and_its_line(registry):
    err = refused(BAD / "schema_error.yaml", registry)
    assert err.line == 7 and err.reason.startswith("steps.0.retries.attempts:")


def test_step_doing_two_things_is_refused_at_the_step(registry):
    err = refused(BAD / "two_things.yaml", registry)
    assert err.line == 6 and "exactly one of action, command, http" in err.reason


def test_precondition_must_be_read_only(registry):
    err = refused(BAD / "mutating_precondition.yaml", registry)
    assert err.line == 4 and "read-only" in err.reason


def test_yaml_syntax_error_names_the_line(registry, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ndescription: x\nsteps:\n  - id: a\n    command: [true\n")
    err = refused(path, registry)
    assert err.line is not None and err.line >= 5 and "not valid YAML" in err.reason


def test_missing_required_parameter_is_refused_with_its_declaration_line(registry):
    loaded = load_runbook(RUNBOOKS / "params.yaml", registry)
    with pytest.raises(RunbookError) as info:
        bind_params(loaded, {}, sites={"A", "B"})
    assert info.value.line == 5 and "missing parameter 'target'" in info.value.reason


def test_unknown_parameter_is_refused(registry):
    loaded = load_runbook(RUNBOOKS / "params.yaml", registry)
    with pytest.raises(RunbookError) as info:
        bind_params(loaded, {"target": "B", "tagret": "A"}, sites={"A", "B"})
    assert info.value.line == 4 and "unknown parameter 'tagret'" in info.value.reason


def test_parameter_of_the_wrong_type_or_an_unknown_site_is_refused(registry):
    loaded = load_runbook(RUNBOOKS / "params.yaml", registry)
    with pytest.raises(RunbookError, match="'C' is not a configured site"):
        bind_params(loaded, {"target": "C"}, sites={"A", "B"})
    with pytest.raises(RunbookError, match="'three' is not an int") as info:
        bind_params(loaded, {"target": "A", "attempts": "three"}, sites={"A", "B"})
    assert info.value.line == 7


def test_parameters_are_typed_over_their_defaults(registry):
    loaded = load_runbook(RUNBOOKS / "params.yaml", registry)
    params = bind_params(loaded, {"target": "B", "dry": "yes", "budget_s": "0.5"}, sites={"A", "B"})
    assert params == {"target": "B", "budget_s": 0.5, "attempts": 3, "dry": True}


def test_a_whole_string_reference_keeps_its_type_and_a_partial_one_interpolates():
    params, results = {"n": 3, "site": "B"}, {"freeze": {"held": 7, "nested": {"x": 1}}}
    assert resolve("${params.n}", params, results) == 3
    assert resolve({"argv": ["at-${params.site}", "${steps.freeze.nested.x}"]}, params, results) == \
        {"argv": ["at-B", 1]}
    assert resolve("$${literal}", params, results) == "${literal}"
    with pytest.raises(RefError, match="has no 'missing'"):
        resolve("${steps.freeze.missing}", params, results)


def test_good_runbooks_load(registry):
    for name in ("files", "rollback", "params"):
        loaded = load_runbook(RUNBOOKS / f"{name}.yaml", registry)
        assert loaded.runbook.name == name and len(loaded.sha256) == 64


def test_every_runbook_under_runbooks_loads_with_standbyctls_registry_and_has_its_description(tmp_path):
    from cutover.witness import open_witness
    from standby.settings import load_settings
    from standbyctl.runbook_registry import build_registry

    repo = RUNBOOKS.parents[1]
    settings = load_settings(repo / "config" / "standby.yaml")
    witness = open_witness(f"sqlite:///{tmp_path / 'witness.db'}")
    try:
        registry = build_registry(settings, witness)
    finally:
        witness.close()
    assert {"wait", "check_http", "fail"} <= set(registry.names())
    for path in sorted((repo / "runbooks").glob("*.yaml")):
        loaded = load_runbook(path, registry)  # RunbookError names the file and line
        assert loaded.runbook.name == path.stem, path
        assert path.with_suffix(".md").is_file(), f"{path.name} needs its operator's description beside it"
