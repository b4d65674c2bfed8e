"""Read pickled numpy data without executing arbitrary code.

CIFAR batches and the CIFAR-N `.pt` files are pickles. A pickle can name any importable callable
(`os.system`, `builtins.eval`, ...) and have it called on load, so `pickle.load` on a file a user
passes in runs whatever the file says. This unpickler resolves only the few globals that numpy
arrays, dtypes and numpy scalars need; anything else is refused before it is imported.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from casam.data.errors import DataFormatError

__all__ = ["UnsafePickleError", "restricted_loads"]


class UnsafePickleError(DataFormatError, pickle.UnpicklingError):
    """The pickle names a global outside the numpy allow-list (it could run code on load)."""


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Python 3 writes `bytes` into protocol-2 pickles as `_codecs.encode(str, "latin1")`.
    if encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed; only 'latin1' is")
    return text.encode("latin1")


# Resolve numpy's reconstruction helpers from the objects themselves, so that both the numpy<2 names
# (`numpy.core.multiarray`) and the numpy>=2 names (`numpy._core.multiarray`) map to whatever this
# numpy provides, without importing deprecated modules.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]  # protocol 5 pickles arrays as _frombuffer(buffer, dtype, shape, order)

_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(_module, "scalar")] = _SCALAR
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = _FROMBUFFER
# numpy>=1.25 pickles dtypes by class, e.g. numpy.dtypes.Int64DType; allow exactly those classes.
for _name in dir(getattr(np, "dtypes", object())):
    if _name.endswith("DType"):
        _ALLOWED[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source} references {module}.{name}, which could run code on load; "
                f"only numpy array globals are allowed"
            ) from None


def restricted_loads(data: bytes, *, source: str, encoding: str = "ASCII") -> Any:
    """Unpickle `data` allowing only numpy array/dtype/scalar reconstruction and plain Python types.

    `source` names the file in error messages. `encoding="bytes"` reads Python 2 pickles (CIFAR)
    with their keys as bytes, as they were written. Raises UnsafePickleError (a ValueError) for any
    other global, and DataFormatError (a ValueError) naming `source` for a truncated or corrupt pickle.
    """
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as error:
        raise DataFormatError(f"{source} is not a readable pickle (truncated or corrupt: {error})") from None
