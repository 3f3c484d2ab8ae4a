"""The one rule for "local path or hub id", shared by weight and tokenizer loaders."""

import pytest

from ilql_jax import tokenizers
from ilql_jax.hub import is_hub_id
from ilql_jax.models import hf_import


@pytest.mark.parametrize("name", ["gpt2", "openai-community/gpt2", "distilgpt2"])
def test_hub_ids(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id(name)


@pytest.mark.parametrize("name", ["", "./gpt2", "/no/such/dir", "~/gpt2", "runs/a/b", "../gpt2"])
def test_path_like_names_are_local(name):
    assert not is_hub_id(name)


def test_an_existing_directory_is_local_even_if_it_looks_like_an_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()
    assert not is_hub_id("gpt2")


def test_missing_local_paths_are_reported_not_fetched(tmp_path):
    missing = str(tmp_path / "nowhere" / "model")
    with pytest.raises(FileNotFoundError, match="no GPT-2 checkpoint"):
        hf_import.resolve(missing)
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        tokenizers.gpt2_tokenizer(missing)
