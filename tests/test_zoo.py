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


@pytest.mark.parametrize("name", ["whisper-tiny.en", "smollm2-135m-instruct", "piper-joe", "silero-vad"])
def test_installed_bundles_resolve(name):
    entry = ZOO[name]
    if entry.bundle.folder() is None:
        pytest.skip(f"{entry.bundle.pip_name} not installed")
    found = resolve(name)
    assert found.source.startswith("bundle:")
    assert entry.main_file == "" or found.main_file is not None
