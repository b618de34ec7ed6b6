"""The built-in corpus: the running Python's standard library documentation.

Every machine with Python has it, so the default local cluster searches real text with no
download. One document per public module, class, function and method that has a docstring;
ids are dotted names (``json.dumps``, ``json.JSONDecoder.decode``), titles the name and
signature. Gathering imports a few hundred modules, so :func:`builtin_index_dir` runs it in a
child process: a module's import-time side effects (output, warnings, threads, ``sys.modules``
growth) stay out of the serving process. The index is cached in the user cache directory, one
per Python version, index format version and shard count.

:func:`write_corpus` writes the corpus as BEIR-style JSON lines.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

from shards.index.builder import Document, build_index
from shards.index.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest

__all__ = [
    "SKIPPED_MODULES",
    "builtin_index_dir",
    "stdlib_documents",
    "stdlib_module_names",
    "write_corpus",
]

#: Modules never imported: side effects on import (a browser, printed text, a GUI, grammar
#: files written next to the library, terminal state), platform-only, test suites, or
#: documented through another module (``posix`` through ``os``).
SKIPPED_MODULES = frozenset(
    {
        "antigravity", "this", "tkinter", "turtle", "turtledemo", "idlelib", "test",
        "lib2to3", "readline", "rlcompleter", "pydoc_data", "ensurepip", "distutils",
        "msilib", "winreg", "winsound", "msvcrt", "nt", "site", "sitecustomize",
        "usercustomize", "xxsubtype", "xxlimited", "xxlimited_35", "posix",
    }
)  # fmt: skip
#: Submodule name parts that are never imported (tests, scripts, codec tables).
_SKIPPED_PARTS = frozenset({"test", "tests", "idle_test", "__main__", "_bundled"})
#: Longest title kept, in characters (long signatures are cut).
MAX_TITLE_CHARS = 200
#: Longest a full gathering run may take in the child process, in seconds.
GATHER_TIMEOUT_S = 180.0


def stdlib_module_names() -> list[str]:
    """Public standard-library modules and their public submodules, sorted, minus skips.

    Submodules are found from the file system (``pkgutil.iter_modules``) without importing
    them; the packages themselves are imported to find their paths.
    """
    top = sorted(
        name
        for name in sys.stdlib_module_names
        if not name.startswith("_") and name not in SKIPPED_MODULES
    )
    names: list[str] = []
    for name in top:
        names.append(name)
        if name == "encodings":  # one module per codec table: noise, not documentation
            continue
        names.extend(_submodules(name))
    return names


def _submodules(package: str) -> list[str]:
    spec = importlib.util.find_spec(package) if "." not in package else None
    paths = spec.submodule_search_locations if spec is not None else None
    if not paths:
        return []
    found: list[str] = []
    stack = [(package, list(paths))]
    while stack:
        prefix, search = stack.pop()
        for info in pkgutil.iter_modules(search):
            if info.name.startswith("_") or info.name in _SKIPPED_PARTS:
                continue
            full = f"{prefix}.{info.name}"
            found.append(full)
            if info.ispkg:
                sub = Path(search[0]) / info.name if len(search) == 1 else None
                if sub is not None and sub.is_dir():
                    stack.append((full, [str(sub)]))
    return sorted(found)


def _import_quietly(name: str) -> ModuleType | None:
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:
            return None


def _title(qualname: str, obj: object) -> str:
    try:
        signature = str(inspect.signature(obj))  # type: ignore[arg-type]
    except Exception:  # no signature, or one that fails to evaluate
        signature = ""
    title = f"{qualname}{signature}"
    return title if len(title) <= MAX_TITLE_CHARS else title[: MAX_TITLE_CHARS - 3] + "..."


def _doc(obj: object) -> str:
    try:
        return inspect.getdoc(obj) or ""
    except Exception:
        return ""


def _is_own(obj: object, module: ModuleType, name: str) -> bool:
    """True when ``module`` is where users find ``obj``: it defines or explicitly exports it.

    ``__all__`` makes a re-export public (``json.JSONDecoder``, ``asyncio.gather``,
    ``os.listdir``); without one, C accelerators (``_heapq``) count as the module's own.
    """
    owner = getattr(obj, "__module__", None)
    if owner == module.__name__:
        return True
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return isinstance(exported, list | tuple) and name in exported
    return isinstance(owner, str) and owner.startswith("_")


def _module_documents(module: ModuleType, seen_objects: set[int]) -> Iterator[Document]:
    # Why track objects: a class re-exported by its package (``json.JSONDecoder``) is also
    # defined in a submodule (``json.decoder``); modules are visited package first, so each
    # object is documented once, under the name users type.
    modname = module.__name__
    doc = _doc(module)
    if doc:
        first = doc.strip().splitlines()[0]
        yield Document(modname, f"{modname} — {first}"[:MAX_TITLE_CHARS], doc)
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or id(obj) in seen_objects or not _is_own(obj, module, name):
            continue
        if inspect.isclass(obj):
            seen_objects.add(id(obj))
            qual = f"{modname}.{name}"
            class_doc = _doc(obj)
            if class_doc and class_doc != _doc(object):
                yield Document(qual, _title(qual, obj), class_doc)
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_"):
                    continue
                wrapped = isinstance(member, classmethod | staticmethod)
                target = member.__func__ if wrapped else member
                if not (inspect.isroutine(target) or isinstance(target, property)):
                    continue
                member_doc = _doc(target)
                if member_doc:
                    member_qual = f"{qual}.{attr}"
                    yield Document(member_qual, _title(member_qual, target), member_doc)
        elif inspect.isroutine(obj):
            seen_objects.add(id(obj))
            routine_doc = _doc(obj)
            if routine_doc:
                qual = f"{modname}.{name}"
                yield Document(qual, _title(qual, obj), routine_doc)


def stdlib_documents(modules: Iterable[str] | None = None) -> Iterator[Document]:
    """Documents for ``modules`` (default: :func:`stdlib_module_names`), each id once.

    Modules that fail to import are skipped silently. Imports happen in *this* process:
    call it in a child process for the whole library (as :func:`builtin_index_dir` does).
    """
    seen: set[str] = set()
    seen_objects: set[int] = set()
    for name in stdlib_module_names() if modules is None else modules:
        module = _import_quietly(name)
        if module is None:
            continue
        try:
            docs = list(_module_documents(module, seen_objects))
        except Exception:  # introspection broke on this module: skip it
            continue
        for doc in docs:
            if doc.doc_id not in seen:
                seen.add(doc.doc_id)
                yield doc


def _cache_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("fanout-aggregator", appauthor=False))


def _index_name(n_shards: int) -> str:
    version = ".".join(str(v) for v in sys.version_info[:3])
    return f"stdlib-{sys.implementation.name}{version}-format{FORMAT_VERSION}-{n_shards}shards"


def _is_built(index_dir: Path, n_shards: int) -> bool:
    try:
        return Manifest.read(index_dir).n_shards == n_shards
    except (OSError, ValueError):
        return False


def builtin_index_dir(
    n_shards: int = 4, *, cache_dir: Path | None = None, rebuild: bool = False
) -> Path:
    """The directory of the built-in stdlib index with ``n_shards`` shards, built if needed.

    Cached under ``cache_dir`` (default: the user cache directory); the cache key holds the
    Python version and the index format version, so either changing builds a fresh index.
    Building takes a few seconds. Raises :class:`OSError` if the cache is not writable and
    :class:`RuntimeError` if gathering the documentation fails.
    """
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    index_dir = root / _index_name(n_shards)
    if not rebuild and _is_built(index_dir, n_shards):
        return index_dir
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / f"{index_dir.name}.lock"):
        if not rebuild and _is_built(index_dir, n_shards):  # built while we waited
            return index_dir
        with tempfile.TemporaryDirectory(prefix="stdlib-corpus-", dir=root) as tmp:
            corpus = Path(tmp) / "stdlib.jsonl"
            _gather_in_child(corpus)
            build_index(corpus, index_dir, n_shards, progress=False)
    if not (index_dir / MANIFEST_NAME).is_file():  # pragma: no cover - defensive
        raise RuntimeError(f"building the built-in index at {index_dir} failed")
    return index_dir


def _gather_in_child(out: Path, modules: Iterable[str] = ()) -> None:
    """Write the corpus of ``modules`` (default: the whole library) from a child process."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONWARNINGS="ignore")
    try:
        subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, str(out), *modules],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=GATHER_TIMEOUT_S,
            env=env,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-1:]
        raise RuntimeError(f"gathering the stdlib documentation failed: {tail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"gathering the stdlib documentation took over {GATHER_TIMEOUT_S:g} s"
        ) from exc


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (POSIX ``flock``; elsewhere, none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_CHILD_CODE = (
    "import sys; from shards.index.stdlib import write_corpus; "
    "write_corpus(sys.argv[1], sys.argv[2:] or None)"
)


def write_corpus(out: Path | str, modules: Iterable[str] | None = None) -> int:
    """Write :func:`stdlib_documents` to ``out`` as JSON lines; returns the document count."""
    out = Path(out)
    count = 0
    with out.open("w", encoding="utf-8") as fh:
        for doc in stdlib_documents(modules):
            record = {"_id": doc.doc_id, "title": doc.title, "text": doc.text}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
