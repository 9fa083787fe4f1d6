"""Keep TensorFlow's start-up chatter off stderr (unless the user asks for it).

TensorFlow writes its start-up notes (oneDNN, CPU instructions, "could not find cuda drivers")
from C++ static initialisers that run while `import tensorflow` loads its shared libraries,
before its own logging reads TF_CPP_MIN_LOG_LEVEL: setting the variable from Python silences
what TensorFlow logs later ("failed call to cuInit") but not those. So the import itself runs
with file descriptor 2 captured, and what it wrote is replayed minus the known noise: a real
error printed during the import still reaches the user.

Active only while TF_CPP_MIN_LOG_LEVEL is "3" (xray_core's default, see __init__.py); any other
value, e.g. the CLI's --verbose, lets everything through untouched.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# Lines TensorFlow, absl and CUDA write at start-up that say nothing the user can act on.
NOISE = re.compile(
    r"^(?:"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] .*"  # absl/glog INFO and WARNING lines
    r"|E\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] .*(?:cuInit|CUDA|cuda).*"  # no GPU on this machine
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\."
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."  # LiteRT, once per process
    r")$"
)


def is_quiet() -> bool:
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3"


def drop_noise(text: str) -> str:
    """`text` without the NOISE lines (line ends kept)."""
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.match(line.rstrip("\r\n")))


@contextlib.contextmanager
def filtered_stderr():
    """Capture what is written to file descriptor 2 (C++ included); replay it without NOISE."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = drop_noise(captured.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` inside `filtered_stderr`."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_filename, is_package, get_resource_reader, ...
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if not is_quiet():
            return self.loader.exec_module(module)
        with filtered_stderr():
            return self.loader.exec_module(module)


class QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """A meta-path finder that hands out `tensorflow`'s usual spec with a quiet loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on sys.meta_path (once); harmless if TensorFlow is already imported."""
    if not any(isinstance(f, QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowFinder())
