"""Old module paths that users may hold, kept working for one release with a ``DeprecationWarning``.

``sde_sam.weak_error`` was both the package of the weak-error studies and the function
:func:`sde_sam.weak_error`; the package is now :mod:`sde_sam.weak` and the name is the function's alone. An
import of the old path (``from sde_sam.weak_error import WeakErrorStudy``, ``import sde_sam.weak_error.exact``)
warns and is served by a stand-in module that forwards every attribute to the new module. The stand-in for the
package is callable, so ``sde_sam.weak_error(...)`` keeps working after such an import rebinds the name.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

OLD, NEW = "sde_sam.weak_error", "sde_sam.weak"


class _Forward(types.ModuleType):
    """A stand-in module: attributes from ``target``; calling it calls ``target.weak_error`` (the package's)."""

    def __init__(self, name: str, target: types.ModuleType):
        super().__init__(name, target.__doc__)
        self._target = target
        self.__path__ = []  # so submodules of the old path come to this finder too, never a second copy

    def __getattr__(self, attr: str):
        return getattr(self._target, attr)

    def __dir__(self):
        return dir(self._target)

    def __call__(self, *args, **kwargs):
        return self._target.weak_error(*args, **kwargs)


class _RenamedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``sde_sam.weak_error[.sub]`` (after the ordinary finders have not) and serves ``sde_sam.weak[.sub]``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == OLD or fullname.startswith(OLD + "."):
            return importlib.util.spec_from_loader(fullname, self, is_package=fullname == OLD)
        return None

    def create_module(self, spec):
        new = NEW + spec.name[len(OLD):]
        warnings.warn(f"the module {spec.name} is now {new} (the name sde_sam.weak_error is the function); "
                      f"import from {new}: the old path goes in the next release", DeprecationWarning, stacklevel=2)
        return _Forward(spec.name, importlib.import_module(new))

    def exec_module(self, module):
        pass


def install() -> None:
    """Add the finder once (last, so it only sees names nothing else can find)."""
    if not any(isinstance(f, _RenamedModules) for f in sys.meta_path):
        sys.meta_path.append(_RenamedModules())
