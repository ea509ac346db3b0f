"""The settings: flat public names (flags, PMERGE_ variables), read once into groups."""
import argparse

import pytest
from pydantic import ValidationError

from models_store.flags import describe_flags
from service.cli import add_serve_arguments, settings_from_args
from service.runtime.processes import front_end_settings
from service.settings import ENV_PREFIX, GROUPS, Settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in Settings.fields():
        monkeypatch.delenv(ENV_PREFIX + name.upper(), raising=False)
    monkeypatch.delenv("PMERGE_FRONTS", raising=False)
    return monkeypatch


def test_a_variable_lands_in_its_group_and_a_flag_wins(clean_env):
    clean_env.setenv("PMERGE_MAX_BATCH", "7")
    clean_env.setenv("PMERGE_QUEUE_SIZE", "9")
    clean_env.setenv("PMERGE_MAX_FILES", "3")
    clean_env.setenv("PMERGE_CUDA_GRAPHS", "false")
    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(["--max-batch", "2", "--port", "0"])
    settings = settings_from_args(args)
    assert settings.engine.max_batch == 2  # the flag over the variable
    assert settings.engine.queue_size == 9 and settings.engine.cuda_graphs is False
    assert settings.limits.max_files == 3 and settings.topology.port == 0


def test_every_setting_has_one_flat_name():
    names = [n for model in GROUPS.values() for n in model.model_fields]
    assert len(names) == len(set(names))
    assert set(names) <= set(Settings.fields()) and not set(GROUPS) & set(Settings.fields())


def test_families_are_parsed_once_and_a_bad_id_is_named(clean_env):
    clean_env.setenv("PMERGE_FAMILIES", "a-1, b")
    assert Settings().families == ["a-1", "b"]
    clean_env.setenv("PMERGE_FAMILIES", "ok,../etc")
    with pytest.raises(ValidationError, match="is not a family id"):
        Settings()


def test_a_grouped_error_names_the_flag(clean_env):
    with pytest.raises(ValidationError) as caught:
        Settings(max_connections=0)
    assert describe_flags(caught.value, ENV_PREFIX, GROUPS).startswith(
        "--max-connections / PMERGE_MAX_CONNECTIONS: Input should be greater than or equal to 1")


def test_replace_validates_and_keeps_the_rest(clean_env):
    settings = Settings(max_batch=8, max_files=5)
    smaller = settings.replace(max_files=2)
    assert smaller.limits.max_files == 2 and smaller.engine.max_batch == 8
    with pytest.raises(ValidationError):
        settings.replace(max_files=0)


def test_a_front_end_gets_its_share_in_the_same_groups(clean_env):
    settings = Settings(max_connections=10, max_inflight_bytes=1000, api_key="k")
    mine = Settings.model_validate(front_end_settings(settings, 3))
    assert mine.limits.max_connections == 4 and mine.limits.max_inflight_bytes == 334
    assert mine.topology.front_ends == 3 and mine.api_key.get_secret_value() == "k"
    assert mine.engine == settings.engine and mine.caches == settings.caches
