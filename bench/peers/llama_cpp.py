"""llama.cpp as a peer, from one pinned source: the `llama-cpp-python` sdist, which vendors it.

One place fetches the sdist and builds it, for every peer check: `gguf_converter.py` (libllama through
the sdist's ctypes bindings, and its `convert_hf_to_gguf.py`), `engine_peers.py` (`llama-batched-bench`)
and, later, an OpenAI-compatible-server integration (`llama-server`). Everything lands in
`.cache/peers/` (git-ignored); a second call finds it there and returns at once.

CPU only, Release, `-DGGML_NATIVE=ON`: the peer gets every instruction set this machine has, as ours
does. Shared libraries, because the ctypes bindings load `libllama.so`. ggml's own thread pool instead
of OpenMP, so the peer's threads do not depend on the `OMP_WAIT_POLICY` our Makefile exports. No HTTPS
(OpenSSL) and no web UI download: the server is only ever reached on localhost, and the build must work
offline.

Run as a script it builds and prints the path of the named binaries (`make peer-llama-server`).
Note the name shadows the `llama_cpp` package of llama-cpp-python, which the project never installs; the
ctypes worker stands that package up from the sdist explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "peers"
LCP = "llama-cpp-python==0.3.36"  # pinned: the converter, gguf-py and llama.cpp all come from this sdist
BUILD = CACHE / "llama.cpp-build"
BUILD_LOG = CACHE / "llama.cpp-build.log"
STAMP = BUILD / "simulacra-build.json"  # the flags and targets the binaries were built with, and the time
TARGETS = ["llama", "llama-batched-bench", "llama-server"]
FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=ON",
    "-DGGML_OPENMP=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    *(f"-DLLAMA_BUILD_{w}=OFF" for w in ("TESTS", "EXAMPLES", "APP")),
]


class PeerError(RuntimeError):
    """The peer could not be fetched or built; the message says why and where the log is."""


def log(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def last_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {r.returncode}"


def sdist() -> Path:
    """The unpacked sdist; downloaded from the package index once (sdist only, no dependencies)."""
    version = LCP.split("==")[1]
    src = CACHE / "src" / f"llama_cpp_python-{version}"
    if (src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        return src
    sdist_dir = CACHE / "sdist"
    sdist_dir.mkdir(parents=True, exist_ok=True)
    tgz = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
    if not tgz.is_file():
        log(f"downloading the {LCP} sdist ...")
        r = run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", LCP, "-d", sdist_dir]
        )
        if r.returncode or not tgz.is_file():
            raise PeerError(f"pip download {LCP} failed: {last_line(r)}")
    (CACHE / "src").mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        tar.extractall(CACHE / "src", filter="data")
    return src


def source() -> Path:
    """The vendored llama.cpp tree inside the sdist."""
    return sdist() / "vendor" / "llama.cpp"


def _paths(targets: list[str]) -> list[Path]:
    return [BUILD / "bin" / ("libllama.so" if t == "llama" else t) for t in targets]


def _stamp() -> dict:
    try:
        return json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}


def is_built(targets: list[str] | None = None) -> bool:
    """Whether `targets` (default: all of TARGETS) are there, built with today's FLAGS."""
    return _stamp().get("flags") == FLAGS and all(p.exists() for p in _paths(targets or TARGETS))


def build(targets: list[str] | None = None) -> Path:
    """The build folder (binaries and shared libraries in its bin/), after building `targets` (default:
    all of TARGETS) if they are missing or were built with other flags. Raises PeerError."""
    targets = targets or TARGETS
    if is_built(targets):
        return BUILD
    stamp = _stamp()
    if not shutil.which("cmake"):
        raise PeerError("not built: no cmake on this machine")
    src = source()
    t0 = time.time()
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    log(f"building {', '.join(targets)} from the {LCP} sdist (cmake, CPU only; about 8 minutes on 2 cores) ...")
    r = run(["cmake", "-S", src, "-B", BUILD, *gen, *FLAGS])
    text = r.stdout + r.stderr
    if r.returncode == 0:
        jobs = str(max(1, min(2, os.cpu_count() or 1)))
        r = run(["nice", "-n", "19", "cmake", "--build", BUILD, "--target", *targets, "-j", jobs])
        text += r.stdout + r.stderr
    BUILD_LOG.write_text(text)
    if r.returncode or not all(p.exists() for p in _paths(targets)):
        raise PeerError(f"build failed ({last_line(r)}), see {BUILD_LOG.relative_to(ROOT)}")
    seconds = round(time.time() - t0)
    log(f"built in {seconds} s")
    # Targets built with the same flags accumulate, and so does the time spent compiling them.
    before = stamp if stamp.get("flags") == FLAGS else {}
    built = sorted(set(targets) | set(before.get("targets", [])))
    total = seconds + before.get("seconds", 0)
    STAMP.write_text(json.dumps({"flags": FLAGS, "targets": built, "seconds": total}, indent=2))
    return BUILD


def build_seconds() -> int | None:
    """Seconds spent compiling what is built now, all builds with today's FLAGS (None before the first)."""
    stamp = _stamp()
    return stamp.get("seconds") if stamp.get("flags") == FLAGS else None


def binary(name: str) -> Path:
    """A built program (`llama-batched-bench`, `llama-server`) or `libllama.so`, built if needed."""
    target = "llama" if name in ("llama", "libllama.so") else name
    build([target])
    return _paths([target])[0]


def lib_dir() -> Path:
    """The folder of libllama.so and libggml*.so (what LLAMA_CPP_LIB_PATH wants)."""
    return binary("llama").parent


def main() -> None:
    targets = [("llama" if n == "libllama.so" else n) for n in sys.argv[1:]] or TARGETS
    try:
        build(targets)  # one cmake invocation for all of them
    except PeerError as exc:
        sys.exit(str(exc))
    for p in _paths(targets):
        print(p)


if __name__ == "__main__":
    main()
