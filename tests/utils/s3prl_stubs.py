"""A torchaudio stub that lets s3prl 0.4.18 import in this project's environment; for tests only.

s3prl's `hub` (every upstream's hubconf), its `nn` package and its SUPERB runner import torchaudio at module
level, and torchaudio cannot be installed beside the pinned CPU torch (its newest build is CUDA-only and
breaks `import transformers`). What is stubbed, and nothing else: `torchaudio` and every `torchaudio.*` name
become empty modules, so that `import torchaudio` and `from torchaudio.x import y` succeed;
`torchaudio.set_audio_backend` is a no-op (s3prl calls it at import and at start-up; torchaudio 2.x
deprecated it). Calling any other stubbed name raises `StubUsed`, so a code path that really needs torchaudio
(the SUPERB datasets' audio loading, other upstreams' feature extraction) fails loudly, computing nothing.

In-process: `with torchaudio_stub(): import s3prl.hub` (the torchaudio names leave sys.modules on exit).
As a launcher: `python3 -m tests.utils.s3prl_stubs SCRIPT ARGS...` runs SCRIPT as `__main__` under the stub.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import runpy
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

STUBBED = "torchaudio"


class StubUsed(RuntimeError):
    """A stubbed name was called: the code path needs the real package."""


class _StubModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise StubUsed(
            f"{self.__name__} was called, but {STUBBED} is a test stub here (tests/utils/s3prl_stubs)"
        )


class _TorchaudioFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `torchaudio` and `torchaudio.*` as empty stub packages."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == STUBBED or fullname.startswith(STUBBED + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        return _StubModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []
        if module.__name__ == STUBBED:
            module.set_audio_backend = lambda backend: None  # type: ignore[attr-defined]


@contextmanager
def torchaudio_stub() -> Iterator[None]:
    """Install the stub; on exit remove the finder and the torchaudio modules it made."""
    finder = _TorchaudioFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m == STUBBED or m.startswith(STUBBED + ".")]:
            del sys.modules[name]


def run_script(argv: Sequence[str]) -> None:
    """Run argv[0] as `__main__` with argv as sys.argv, under the stub."""
    sys.argv = list(argv)
    with torchaudio_stub():
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    run_script(sys.argv[1:])
