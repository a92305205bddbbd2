"""One error family: every error class the package defines derives from CoresetError and keeps its
builtin base; the exit code travels with the error."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import coreset_sampler
from coreset_sampler import CoresetError, CoresetValueError
from coreset_sampler.errors import CoresetOSError, CoresetRuntimeError, CoresetTypeError


def _package_modules():
    skip = ("__main__", "integrations.redux.train")  # runs the CLI / needs a traiNNer-redux clone
    for m in pkgutil.walk_packages(coreset_sampler.__path__, "coreset_sampler."):
        if m.name.endswith(skip):
            continue
        try:
            yield importlib.import_module(m.name)
        except ImportError as e:  # an optional extra (basicsr, spandrel) that is not installed
            pytest.skip(f"{m.name}: {e}")


def _defined_errors():
    for module in _package_modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                yield obj


def test_every_error_class_of_the_package_is_in_the_family():
    errors = set(_defined_errors())
    assert {CoresetValueError, coreset_sampler.ProvenanceError, coreset_sampler.ModelFileError} <= errors
    outside = sorted(e.__qualname__ for e in errors if not issubclass(e, CoresetError))
    assert not outside, f"error classes outside the CoresetError family: {outside}"


@pytest.mark.parametrize("cls, builtin", [(CoresetValueError, ValueError), (CoresetTypeError, TypeError),
                                          (CoresetRuntimeError, RuntimeError), (CoresetOSError, OSError)])
def test_each_family_member_keeps_its_builtin_base(cls, builtin):
    with pytest.raises(builtin):  # `except ValueError` in a caller's code still catches it
        raise cls("x")
    assert issubclass(cls, CoresetError) and cls("x").exit_code == 1


def test_refusals_exit_2_and_bad_values_exit_1():
    from coreset_sampler.degradation import ImageTooSmallError
    from coreset_sampler.export import UnsafeWriteError

    for cls in (coreset_sampler.ProvenanceError, UnsafeWriteError, ImageTooSmallError):
        assert cls.exit_code == 2, cls
    with pytest.raises(CoresetError) as e:
        coreset_sampler.select_indices([0.1, 0.2], mode="des", ratio=2.0)
    assert e.value.exit_code == 1 and isinstance(e.value, ValueError) and "ratio" in str(e.value)


def test_the_os_error_keeps_errno_and_file_name():
    e = CoresetOSError(28, "No space left on device", "out/x.png")
    assert (e.errno, e.strerror, e.filename) == (28, "No space left on device", "out/x.png")
