"""The plugin registry: entry-point loading, validation of what plugins register, name lookup."""
import re
from pathlib import Path

import pytest
import torch

import prunekit.hookspecs as hookspecs
from prunekit import Arbiter, PrunekitError, Scorer, hookimpl
from prunekit.errors import UnknownNameError
from prunekit.registry import Registry, Source, default_registry

BUILTINS = {
    "scorer": {"snip", "disparse-snip", "gradflow", "disparse-gradflow", "rigl", "disparse-rigl",
               "magnitude", "random", "taylor", "cosprune"},
    "thresholder": {"topk", "erk", "soft-threshold"},
    "arbiter": {"or", "and", "majority"},
    "metric": {"iou", "epi-sim", "css", "mcss"},
}
THIRD_PARTY = Source("someone-elses-plugin", "1.2.3")


class OkScorer(Scorer):
    name = "ok-scorer"
    description = "a scorer for tests\nsecond line is not shown"

    def score(self, context):
        return {}


def plugin_registering(hook, *objects):
    class Plugin:
        pass

    def register_all(register):
        for obj in objects:
            register(obj)

    setattr(Plugin, hook, staticmethod(hookimpl(register_all)))
    return Plugin()


def test_builtins_come_from_prunekit_entry_points():
    registry = Registry.from_entry_points(only_own=True)
    for kind, names in BUILTINS.items():
        assert set(registry.names(kind)) == names
    for info in registry.all():
        assert info.distribution == "prunekit"
        assert info.description and "\n" not in info.description
        assert info.obj.kind == info.kind


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(UnknownNameError) as error:
        default_registry().get("scorer", "disparse-snp")
    message = str(error.value)
    assert "unknown scorer 'disparse-snp'" in message
    assert ("known: cosprune, disparse-gradflow, disparse-rigl, disparse-snip, gradflow, magnitude, "
            "random, rigl, snip, taylor;") in message
    assert "did you mean 'disparse-snip'?" in message


def test_unknown_kind():
    with pytest.raises(UnknownNameError, match="unknown plugin kind 'pruner'"):
        default_registry().names("pruner")


def test_third_party_plugin_is_registered_with_its_distribution():
    registry = Registry()
    registry.add_plugin(plugin_registering("prunekit_register_scorers", OkScorer()), "ok",
                        THIRD_PARTY)
    info = registry.info("scorer", "ok-scorer")
    assert (info.distribution, info.version, info.module) == ("someone-elses-plugin", "1.2.3", "ok")
    assert info.description == "a scorer for tests"
    assert info.as_dict()["distribution"] == "someone-elses-plugin"


def test_registering_the_wrong_interface_names_the_plugin_and_hook():
    registry = Registry()
    bad = plugin_registering("prunekit_register_arbiters", OkScorer())
    with pytest.raises(PrunekitError, match=r"plugin 'bad' from someone-elses-plugin 1.2.3 \(hook "
                                            r"prunekit_register_arbiters\) registered .* which is "
                                            r"not an instance of prunekit.Arbiter"):
        registry.add_plugin(bad, "bad", THIRD_PARTY)


def test_duplicate_names_are_rejected():
    registry = Registry()
    registry.add_plugin(plugin_registering("prunekit_register_scorers", OkScorer()), "first",
                        THIRD_PARTY)
    other = Source("another-plugin", "0.2")
    with pytest.raises(PrunekitError) as error:
        registry.add_plugin(plugin_registering("prunekit_register_scorers", OkScorer()),
                            "second", other)
    message = str(error.value)
    assert message.startswith("scorer 'ok-scorer' is registered twice: by plugin 'second' from "
                              "another-plugin 0.2")
    assert "before it by plugin 'first' from someone-elses-plugin 1.2.3" in message


def test_a_clash_with_a_builtin_blames_the_third_party_plugin():
    """prunekit's own entry points load first, so the clashing newcomer is the one named."""
    class Snip(OkScorer):
        name = "snip"

    registry = Registry.from_entry_points(only_own=True)
    with pytest.raises(PrunekitError, match=r"scorer 'snip' is registered twice: by plugin 'x' "
                                            r"from someone-elses-plugin 1.2.3 .* before it by "
                                            r"plugin 'snip' from prunekit "):
        registry.add_plugin(plugin_registering("prunekit_register_scorers", Snip()), "x",
                            THIRD_PARTY)


def test_registering_a_class_says_to_register_an_instance():
    with pytest.raises(PrunekitError, match=r"registered the class OkScorer; register an "
                                            r"instance: register\(OkScorer\(\)\)"):
        Registry().add_plugin(plugin_registering("prunekit_register_scorers", OkScorer), "x",
                              THIRD_PARTY)


@pytest.mark.parametrize("attribute,value,expected", [
    ("per_task", "yes", "per_task must be True or False, got 'yes'"),
    ("granularity", "channel", "granularity must be 'element' or 'filter', got 'channel'"),
    ("rounds", 0, "rounds must be a positive int, got 0"),
    ("schedule", "cubic", "schedule must be 'exponential' or 'linear', got 'cubic'"),
])
def test_invalid_declarations_are_refused_at_registration(attribute, value, expected):
    bad = type("Bad", (OkScorer,), {attribute: value})()
    with pytest.raises(PrunekitError) as error:
        Registry().add_plugin(plugin_registering("prunekit_register_scorers", bad), "x",
                              THIRD_PARTY)
    assert str(error.value).endswith(f"registered scorer 'ok-scorer': {expected}")


def test_thresholder_scopes_are_checked_at_registration():
    from prunekit import Thresholder

    class Odd(Thresholder):
        name = "odd"
        description = "unknown scope"
        scopes = ("channel",)

        def masks(self, scores, keep_ratio, scope=None):
            return {}

    with pytest.raises(PrunekitError, match="scopes must be a non-empty tuple"):
        Registry().add_plugin(plugin_registering("prunekit_register_thresholders", Odd()), "x",
                              THIRD_PARTY)


def test_extra_plugin_modules_load_from_a_file_without_installing(tmp_path, monkeypatch):
    plugin = tmp_path / "my_dev_plugin.py"
    plugin.write_text(
        "from prunekit import Scorer, JOINT, hookimpl\n"
        "class Dev(Scorer):\n"
        "    name = 'dev-scorer'\n"
        "    description = 'under development'\n"
        "    def score(self, context):\n"
        "        return {}\n"
        "@hookimpl\n"
        "def prunekit_register_scorers(register):\n"
        "    register(Dev())\n")
    monkeypatch.setenv("PRUNEKIT_PLUGINS", str(plugin))
    registry = Registry.from_entry_points(only_own=True)  # loads with autoloading off too
    info = registry.info("scorer", "dev-scorer")
    assert (info.distribution, info.version) == (f"{plugin} (-p)", "not installed")
    assert "snip" in registry.names("scorer")


def test_an_extra_plugin_module_that_fails_to_import_is_one_error(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_PLUGINS", "no_such_module_anywhere")
    with pytest.raises(PrunekitError, match=r"plugin module 'no_such_module_anywhere' \(from -p / "
                                            r"PRUNEKIT_PLUGINS\) failed to load "
                                            r"\(ModuleNotFoundError"):
        Registry.from_entry_points(only_own=True)


def test_badly_formed_names_are_rejected():
    class Shouting(OkScorer):
        name = "Big_Scorer"

    with pytest.raises(PrunekitError, match="lower-case words joined by hyphens"):
        Registry().add_plugin(plugin_registering("prunekit_register_scorers", Shouting()), "x",
                              THIRD_PARTY)


def test_a_failing_hook_is_reported_with_the_plugin_name():
    class Broken:
        @hookimpl
        def prunekit_register_metrics(self, register):
            raise ValueError("boom")

    with pytest.raises(PrunekitError, match="plugin 'broken' failed in prunekit_register_metrics"):
        Registry().add_plugin(Broken(), "broken", THIRD_PARTY)


def test_interfaces_cannot_be_instantiated_without_their_method():
    class Incomplete(Arbiter):
        name = "incomplete"
        description = "no merge"

    with pytest.raises(TypeError):
        Incomplete()


def test_every_hook_is_documented():
    docs = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("prunekit_")]
    assert len(hooks) == 4
    for hook in hooks:
        assert hook in docs, f"{hook} is missing from docs/plugins.md"


def test_builtin_arbiters_on_hand_made_masks():
    a = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    c = torch.tensor([0, 1, 1, 0, 1], dtype=torch.bool)
    get = default_registry().get
    assert get("arbiter", "or").merge([a, b]).tolist() == [True, True, True, False, True]
    assert get("arbiter", "and").merge([a, b]).tolist() == [True, False, False, False, True]
    assert get("arbiter", "majority").merge([a, b, c]).tolist() == [True, True, True, False, True]
    assert get("arbiter", "majority").min_tasks == 3


def test_iou_metric():
    iou = default_registry().get("metric", "iou")
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert iou.layer_score(a, b, None, None) == pytest.approx(1 / 3)
    assert iou.layer_score(a, a, None, None) == 1.0
    empty = torch.zeros(4, dtype=torch.bool)
    assert iou.layer_score(empty, empty, None, None) == 1.0


def test_plugin_names_follow_the_naming_rule():
    for info in default_registry().all():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", info.name)


def test_a_hook_with_the_wrong_parameter_or_name_is_a_clear_error():
    class WrongParameter:
        @hookimpl
        def prunekit_register_arbiters(self, reg):
            pass

    class Misspelled:
        @hookimpl
        def prunekit_register_scorer(self, register):
            pass

    for plugin in (WrongParameter(), Misspelled()):
        registry = Registry()
        with pytest.raises(PrunekitError, match="plugin 'odd' from someone-elses-plugin is invalid"):
            registry.add_plugin(plugin, "odd", THIRD_PARTY)
        assert not registry.manager.has_plugin("odd")
