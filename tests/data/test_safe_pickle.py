"""The restricted unpickler reads numpy data and refuses anything that could run code."""

import os
import pickle

import numpy as np
import pytest

from casam.data import DataFormatError, UnsafePickleError
from casam.data.safe_pickle import restricted_loads


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_scalars_and_plain_types_round_trip(protocol):
    data = {
        "labels": np.arange(7, dtype=np.int64),
        "images": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        "floats": np.linspace(0, 1, 5, dtype=np.float32),
        "scalar": np.float64(2.5),
        "names": ["a", "b"],
        "nested": {"x": (1, 2.0, None, True)},
        b"bytes": b"\x00\xff",
    }
    loaded = restricted_loads(pickle.dumps(data, protocol=protocol), source="test.pkl")
    assert loaded.keys() == data.keys()
    for key in ("labels", "images", "floats"):
        np.testing.assert_array_equal(loaded[key], data[key])
        assert loaded[key].dtype == data[key].dtype
    assert loaded["scalar"] == 2.5 and loaded["names"] == ["a", "b"] and loaded[b"bytes"] == b"\x00\xff"
    assert loaded["nested"] == {"x": (1, 2.0, None, True)}


def test_python2_style_pickle_with_bytes_keys_loads_with_bytes_encoding():
    blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, protocol=2)
    loaded = restricted_loads(blob, source="data_batch_1", encoding="bytes")
    assert loaded[b"labels"] == [1, 2] and loaded[b"data"].shape == (2, 3072)


def test_a_pickle_calling_os_system_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"labels": _RunsCommand(f"touch {marker}")}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"evil\.pt references (posix|os|nt)\.system"):
        restricted_loads(blob, source="evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("target", [eval, exec, getattr, __import__, np.load])
def test_other_dangerous_globals_are_refused(target):
    class Attack:
        def __reduce__(self):
            return (target, ("1",))

    with pytest.raises(UnsafePickleError, match="could run code"):
        restricted_loads(pickle.dumps(Attack(), protocol=4), source="x.pkl")


def test_codecs_encode_is_limited_to_latin1():
    import codecs

    class Attack:
        def __reduce__(self):
            return (codecs.encode, ("abc", "rot13"))

    blob = pickle.dumps(Attack(), protocol=2)  # references _codecs.encode, as numpy bytes do
    with pytest.raises(UnsafePickleError, match="rot13"):
        restricted_loads(blob, source="x.pkl")


def test_unsafe_error_is_a_value_error_and_a_data_format_error():
    assert issubclass(UnsafePickleError, DataFormatError) and issubclass(UnsafePickleError, ValueError)


def test_truncated_pickle_names_the_file():
    blob = pickle.dumps({"labels": np.arange(1000)}, protocol=2)
    with pytest.raises(DataFormatError, match=r"labels\.pkl is not a readable pickle"):
        restricted_loads(blob[: len(blob) // 2], source="labels.pkl")
