"""Model files from PyPI packages: found without importing them, joined, verified, or refused.

Each test builds a small package of its own on sys.path, so the real model wheels are never
touched; the start-up check is exercised through `manage.py check`, as a server start runs it.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from voicechat.local_engine.model_files import ModelFile, ModelUnavailable, PackagedModel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def packages(tmp_path, monkeypatch, settings):
    """A folder on sys.path for fake model packages; the model cache in tmp_path too."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    settings.LOCAL_MODEL_CACHE = str(tmp_path / "cache")

    def make(name: str, files: dict[str, bytes]) -> Path:
        package = root / name
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        for relative, data in files.items():
            (package / relative).write_bytes(data)
        return package

    return make


def test_a_whole_model_directory_is_verified_in_place(packages):
    home = packages("tiny_pkg", {"data/model.bin": b"weights", "data/config.json": b"{}"})
    model = PackagedModel(
        title="Tiny",
        requirements=("tiny-pkg==1.0",),
        files=(
            ModelFile("model.bin", ("tiny_pkg/data/model.bin",), sha(b"weights")),
            ModelFile("config.json", ("tiny_pkg/data/config.json",), sha(b"{}")),
        ),
    )
    assert model.directory() == home / "data"


def test_parts_are_joined_once_into_the_cache_and_verified(packages, settings):
    packages("split_a", {"data/part01.bin": b"first half, "})
    packages("split_b", {"data/part02.bin": b"second half"})
    whole = b"first half, second half"
    model = PackagedModel(
        title="Split",
        requirements=("split-a==1", "split-b==1"),
        files=(
            ModelFile(
                "model.gguf", ("split_a/data/part01.bin", "split_b/data/part02.bin"), sha(whole)
            ),
        ),
    )
    directory = model.directory()
    assert directory.parent == Path(settings.LOCAL_MODEL_CACHE)
    assert (directory / "model.gguf").read_bytes() == whole
    assert [p.name for p in directory.iterdir()] == ["model.gguf"]  # no partial files left

    # A damaged copy in the cache is rebuilt from the packages, not loaded.
    (directory / "model.gguf").write_bytes(b"tampered")
    assert (model.directory() / "model.gguf").read_bytes() == whole


def test_a_missing_package_says_what_to_install(packages):
    model = PackagedModel(
        title="Qwen",
        requirements=("absent-model-part1==0.2.0",),
        files=(ModelFile("model.gguf", ("absent_model_part1/data/part01.bin",), "0" * 64),),
    )
    with pytest.raises(ModelUnavailable) as caught:
        model.directory()
    message = str(caught.value)
    assert "absent-model-part1" in message and "not installed" in message
    assert "requirements-models.txt" in message


def test_a_file_that_is_not_the_pinned_one_is_refused(packages):
    packages("evil_pkg", {"data/model.bin": b"someone else's weights"})
    model = PackagedModel(
        title="Whisper",
        requirements=("evil-pkg==1.0",),
        files=(ModelFile("model.bin", ("evil_pkg/data/model.bin",), sha(b"the real weights")),),
    )
    with pytest.raises(ModelUnavailable) as caught:
        model.directory()
    assert "Refusing to load it" in str(caught.value)
    assert sha(b"the real weights") in str(caught.value)


def test_parts_that_join_into_the_wrong_file_are_refused_and_leave_nothing(packages, settings):
    packages("bad_split", {"data/part01.bin": b"a", "data/part02.bin": b"b"})
    model = PackagedModel(
        title="Split",
        requirements=("bad-split==1",),
        files=(
            ModelFile(
                "model.gguf", ("bad_split/data/part01.bin", "bad_split/data/part02.bin"), "1" * 64
            ),
        ),
    )
    with pytest.raises(ModelUnavailable, match="join into a file"):
        model.directory()
    leftovers = [p for p in Path(settings.LOCAL_MODEL_CACHE).rglob("*") if p.is_file()]
    assert leftovers == []


def manage_check(**env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={**os.environ, "OPENAI_API_KEY": "", "REALTIME_BACKEND": "local", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_server_start_refuses_a_missing_language_model_with_a_clear_error(tmp_path):
    missing = manage_check(LOCAL_LLM="embedded", LOCAL_LLM_MODEL_PATH=str(tmp_path / "no.gguf"))
    assert missing.returncode != 0
    assert "voicechat.E101" in missing.stderr and "no.gguf is not a file" in missing.stderr
    assert "LOCAL_LLM=none" in missing.stderr  # and how to run without it

    # Without the offline engine (a provider key is set) the models are not needed.
    with_openai = manage_check(
        LOCAL_LLM_MODEL_PATH=str(tmp_path / "no.gguf"), REALTIME_BACKEND="auto", OPENAI_API_KEY="x"
    )
    assert with_openai.returncode == 0, with_openai.stderr
    assert manage_check(LOCAL_LLM="none").returncode == 0
