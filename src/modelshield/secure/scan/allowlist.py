"""The allow-list of callables a model pickle may import, and the severity of everything else.

A pickle can only run code through the callables it imports (GLOBAL, STACK_GLOBAL, INST, EXT), so
the scanner judges every import by its full dotted name ``module.name``. Allowed are the tensor and
array rebuilds of PyTorch and NumPy, plain containers and values, and the reconstructors and
estimator classes of scikit-learn that skops also trusts by default (``skops.io`` trusted types:
every ``sklearn`` estimator class, its loss/link/binning internals, NumPy dtypes and bit
generators, SciPy sparse matrices). Everything else is a finding: ``critical`` for the known
code-execution primitives below, ``high`` for any other name. Deny-lists lose (issue 17: modelscan's
21-entry list blocks 12 of 86 published bypasses); this list only names what is allowed, and the
critical list only sets how loudly a refusal is reported.

Reference: PyTorch's ``torch._weights_only_unpickler`` allow-list; skops ``io._trusted_types``.
"""

from __future__ import annotations

import re

from modelshield.secure.scan.findings import Severity

__all__ = ["ALLOCATORS", "ALLOWED", "EXEC_MODULES", "EXEC_NAMES", "MAX_ALLOCATION", "is_allowed",
           "severity_of"]

_TORCH_STORAGES = (
    "Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexDouble", "ComplexFloat", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4",
    "Float8_e4m3fn", "Float8_e5m2", "Float8_e4m3fnuz", "Float8_e5m2fnuz", "UInt16", "UInt32", "UInt64",
)
_TORCH_DTYPES = (
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "complex32", "chalf",
    "complex64", "cfloat", "complex128", "cdouble", "uint8", "int8", "int16", "short", "int32", "int",
    "int64", "long", "bool", "quint8", "qint8", "qint32", "quint4x2", "quint2x4", "float8_e4m3fn",
    "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "uint16", "uint32", "uint64", "bits8",
    "bits16", "bits1x8", "bits2x4", "bits4x2",
)
_TORCH_REBUILDS = (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_sparse_tensor", "_rebuild_qtensor",
    "_rebuild_meta_tensor_no_storage", "_rebuild_nested_tensor", "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
)

ALLOWED: frozenset[str] = frozenset({
    # plain values and containers (skops: PRIMITIVE_TYPE_NAMES, CONTAINER_TYPE_NAMES, set, slice...)
    *(f"builtins.{n}" for n in ("set", "frozenset", "complex", "slice", "bytearray", "bytes", "int",
                                "float", "str", "bool", "list", "tuple", "dict", "range", "object")),
    "collections.OrderedDict", "collections.defaultdict", "collections.Counter", "collections.deque",
    "_codecs.encode",  # protocol 0-2 bytes: _codecs.encode(str, 'latin1'); torch allows it too
    "copyreg._reconstructor",  # protocol 0/1 objects: its class arguments are imports judged here
    "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
    "decimal.Decimal", "fractions.Fraction", "uuid.UUID",
    # PyTorch tensors, storages, dtypes (torch._weights_only_unpickler's list)
    *(f"torch._utils.{n}" for n in _TORCH_REBUILDS),
    "torch._tensor._rebuild_from_type_v2", "torch._tensor.Tensor", "torch.Tensor",
    "torch.nn.parameter.Parameter", "torch.nn.parameter.Buffer", "torch.Size", "torch.device",
    "torch.storage.UntypedStorage", "torch.storage.TypedStorage", "torch.UntypedStorage",
    "torch.TypedStorage", "torch.serialization._get_layout", "torch.strided", "torch.sparse_coo",
    "torch.sparse_csr", "torch.sparse_csc", "torch.sparse_bsr", "torch.sparse_bsc", "torch._mkldnn",
    "torch.per_tensor_affine", "torch.per_channel_affine", "torch.per_tensor_symmetric",
    "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams", "torch.contiguous_format",
    "torch.channels_last", "torch.channels_last_3d", "torch.preserve_format",
    *(f"torch.{n}Storage" for n in _TORCH_STORAGES),
    *(f"torch.{n}" for n in _TORCH_DTYPES),
    # NumPy arrays, dtypes and scalars (skops: numpy.ndarray, dtype type names, bit generators)
    *(f"numpy.{core}.multiarray.{n}" for core in ("core", "_core") for n in ("_reconstruct", "scalar")),
    *(f"numpy.{core}.numeric._frombuffer" for core in ("core", "_core")),
    "numpy.ndarray", "numpy.dtype", "numpy.ma.core._mareconstruct", "numpy.ma.core.MaskedArray",
    "numpy.ma.MaskedArray", "numpy.matrixlib.defmatrix.matrix", "numpy.matrix",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random._pickle.__generator_ctor", "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator",
    # joblib's in-stream arrays (the bytes follow the wrapper; the scanner skips them by its state)
    "joblib.numpy_pickle.NumpyArrayWrapper",
    # scikit-learn internals skops trusts (estimator classes are matched by _SKLEARN_CLASS below)
    "sklearn.tree._tree.Tree", "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.neighbors._kd_tree.KDTree", "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.newObj", "sklearn.neighbors._ball_tree.newObj",
    "sklearn.utils._bunch.Bunch", "sklearn.ensemble._gb_losses.BinomialDeviance",
})

ALLOCATORS: frozenset[str] = frozenset({
    "builtins.bytearray", "builtins.bytes", "builtins.range", "numpy.ndarray",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "torch.UntypedStorage",
    "torch.storage.UntypedStorage", "torch.TypedStorage", "torch.storage.TypedStorage",
    *(f"torch.{n}Storage" for n in _TORCH_STORAGES),
})
"""Allowed callables that allocate what their integer arguments ask for (``bytearray(n)``,
``numpy.ndarray(shape)``, ``torch.FloatStorage(n)``, ``range(n)`` fed to ``list``): the pickler never
calls them with a size (it writes the bytes, or a persistent id), so a size in a pickle is a finding
when it asks for :data:`MAX_ALLOCATION` or more (a memory bomb for the loader)."""

MAX_ALLOCATION = 1 << 31
"""Elements (or bytes) an allocator call may ask for before the request is a finding."""

_NUMPY_SCALARS = re.compile(
    r"numpy\.(?:float(?:16|32|64|128)?|int(?:8|16|32|64)?|uint(?:8|16|32|64)?|bool_?|complex(?:64|128|256)?"
    r"|c?longdouble|clongfloat|longfloat|csingle|cdouble|longlong|ulonglong|intc|uintc|short|ushort|byte|ubyte|half|single|double|str_|bytes_"
    r"|datetime64|timedelta64|void|object_|dtypes\.[A-Za-z0-9]+DType"
    r"|random\.(?:PCG64|PCG64DXSM|MT19937|Philox|SFC64|_pcg64\.PCG64(?:DXSM)?|_mt19937\.MT19937|_philox\.Philox"
    r"|_sfc64\.SFC64|bit_generator\.SeedSequence|bit_generator\.__pyx_unpickle_SeedSequence))")
# Cython's pickle helpers in scikit-learn's compiled modules: __pyx_unpickle_<Class>(type, checksum, state)
# only calls <Class>.__new__ on a subtype of <Class>; newObj(cls) calls cls.__new__(cls), cls being an
# import judged on its own.
_SKLEARN_CYTHON = re.compile(r"sklearn(?:\.[A-Za-z_][A-Za-z0-9_]*)+\.(?:__pyx_unpickle_[A-Za-z0-9_]+|newObj)")
# Estimator, loss, link and sparse-matrix classes: CamelCase class names inside sklearn / scipy.sparse.
# scikit-learn's and SciPy's classes only store their arguments when constructed (sklearn's estimator
# contract); their private helpers and the modules below that run code are excluded.
_SKLEARN_CLASS = re.compile(r"sklearn(?:\.[a-z_][a-z0-9_]*)*\._?[A-Z][A-Za-z0-9]*"
                            # metric functions that scorers hold (GridSearchCV(scoring="accuracy")):
                            # only names spelled like a metric (``*_score``, ``*_error``...), so that the
                            # helpers these modules import (functools.partial, itertools...) stay out
                            r"|sklearn\.metrics\._[a-z_]+\.[a-z][a-z0-9_]*"
                            r"_(?:score|error|loss|deviance|corrcoef|ratios|kappa)")
_SCIPY_SPARSE = re.compile(r"scipy\.sparse(?:\._[a-z]+)?\.(?:[a-z]{3}_(?:matrix|array))")
_SKLEARN_EXCLUDED = ("sklearn.externals", "sklearn.utils._testing", "sklearn.utils.parallel",
                     "sklearn.utils._joblib", "sklearn.utils.fixes", "sklearn.utils._show_versions",
                     "sklearn.datasets", "sklearn.utils._estimator_html_repr", "sklearn.utils.discovery",
                     # modules that re-export network, thread and test helpers (scikit-learn 1.9)
                     "sklearn.callback", "sklearn.conftest", "sklearn.utils.estimator_checks",
                     "sklearn.utils._test_common", "sklearn.utils._repr_html", "sklearn.utils._available_if",
                     "sklearn.tree._export")
# CamelCase names that scikit-learn modules import from the standard library, typing or third parties
# (``from numbers import Integral``, ``from abc import ABCMeta``, ``from threading import Thread``,
# ``from multiprocessing.connection import Client``): ``sklearn.X.ABCMeta`` resolves to the foreign
# object, so the CamelCase rule must not trust them (ABCMeta builds classes like builtins.type).
_SKLEARN_FOREIGN = frozenset({
    "ABC", "ABCMeta", "Integral", "Real", "Number", "Iterable", "Mapping", "MutableMapping", "Sequence",
    "Callable", "Protocol", "NamedTuple", "Thread", "Queue", "Client", "Listener", "Connection", "Path",
    "StringIO", "BytesIO", "MethodType", "FunctionType", "Parameter", "UserDict", "SkipTest", "DoctestItem",
    "List", "Optional", "Union", "Literal", "Any", "Enum", "Progress", "BarColumn", "Style", "TextColumn",
    "TimeRemainingColumn", "Popen", "Pool", "Process", "Lock", "Event", "Timer",
})

EXEC_MODULES: frozenset[str] = frozenset({
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "runpy", "importlib", "imp", "pty",
    "socket", "shutil", "code", "codeop", "pickle", "_pickle", "cPickle", "dill", "cloudpickle",
    "marshal", "ctypes", "_ctypes", "webbrowser", "pydoc", "operator", "_operator", "functools",
    "timeit", "cProfile", "profile", "pdb", "bdb", "trace", "asyncio", "multiprocessing", "signal",
    "platform", "commands", "popen2", "pip", "setuptools", "distutils", "venv", "ensurepip",
    "urllib", "requests", "httplib", "http", "ftplib", "smtplib", "telnetlib", "xmlrpc", "site",
    "zipimport", "pkgutil", "types", "inspect", "tarfile", "zipfile", "joblib", "numpy.load",
    "torch.load", "torch.hub", "torch.jit", "torch.package", "torch.serialization", "torch.storage",
    "idlelib", "lib2to3", "_osx_support", "_aix_support", "test", "builtins.eval", "builtins.exec",
    "builtins.compile", "builtins.getattr", "builtins.setattr", "builtins.delattr",
    "builtins.__import__", "builtins.open", "builtins.breakpoint", "builtins.input", "builtins.globals",
    "builtins.locals", "builtins.vars", "builtins.type", "builtins.memoryview", "__builtin__",
    "_io", "io", "tempfile", "glob", "logging.config", "uuid._get_command_stdout", "_thread",
    "threading", "concurrent", "sqlite3", "shelve", "dbm", "keras", "tensorflow", "onnx", "torch._dynamo",
    "torch._inductor", "torch.utils.cpp_extension", "numpy.f2py", "numpy.testing", "numpy.distutils",
    "numpy.ctypeslib", "numpy.lib.npyio", "numpy.core._ufunc_reconstruct", "numpy._core._ufunc_reconstruct",
    "_sitebuiltins", "linecache", "copyreg", "copy_reg", "gc", "weakref", "atexit", "readline",
    "rlcompleter", "doctest", "_interpreters", "_xxsubinterpreters", "pandas.io", "logging", "unittest",
    "antigravity", "this", "code.InteractiveInterpreter",
})
"""Modules (or ``module.name`` prefixes) whose callables execute code, spawn processes, touch files or
the network, import modules or load nested pickles: any import from them is a ``critical`` finding."""

EXEC_NAMES: frozenset[str] = frozenset({
    "eval", "exec", "execfile", "compile", "system", "popen", "spawn", "call", "run", "check_output",
    "check_call", "Popen", "getattr", "__import__", "import_module", "load", "loads", "open",
    "fork_exec", "attrgetter", "methodcaller", "partial", "locate", "rmtree", "remove", "unlink",
})
"""Callable names that mark an unknown import as ``critical`` whatever its module (``torch.load``
re-exported elsewhere, ``someapp.utils.system``...)."""


def is_allowed(full: str) -> bool:
    """True when the dotted ``module.name`` may be imported by a model pickle."""
    if full in ALLOWED or _NUMPY_SCALARS.fullmatch(full) or _SCIPY_SPARSE.fullmatch(full) \
            or _SKLEARN_CYTHON.fullmatch(full):
        return True
    if _SKLEARN_CLASS.fullmatch(full):
        if full.rsplit(".", 1)[-1] in _SKLEARN_FOREIGN:
            return False
        return not any(full == x or full.startswith(x + ".") for x in _SKLEARN_EXCLUDED)
    return False


def severity_of(full: str) -> Severity:
    """``critical`` for a known code-execution primitive, ``high`` for any other refused import."""
    parts = full.split(".")
    if parts[0] == "__torch__":  # TorchScript classes: resolved by torch.jit, not imported
        return "high"
    if parts[0].startswith("_") and parts[0] not in ("__main__",):  # private stdlib/C modules
        return "critical"
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) in EXEC_MODULES:
            return "critical"
    if any(p in EXEC_MODULES for p in parts[1:-1]):  # an attribute walk through os, ctypes...
        return "critical"
    if parts[-1] in EXEC_NAMES or any(p.startswith("__") and p.endswith("__") and p != "__init__"
                                      for p in parts[1:]):
        return "critical"
    return "high"
