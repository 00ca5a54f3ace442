"""The set of node types a workflow may use. An explicit object rather than a global: tests and
embedding tools build their own, and a duplicate type name is refused instead of silently
overriding an earlier one."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from graphflow.node.declaration import Node

ENTRY_POINT_GROUP = "graphflow.nodes"


class RegistryError(Exception):
    pass


class Registry:
    def __init__(self, nodes: Iterable[type[Node]] = ()) -> None:
        self._types: dict[str, type[Node]] = {}
        self.sources: dict[str, str] = {}
        self._read_roots: list = []
        self._readers: list = []
        self._pending: dict[str, str] = {}  # module -> source, registered lazily and not yet imported
        self._hint: dict[str, str] = {}  # type name -> the pending module said to define it
        self._loading = threading.RLock()
        for n in nodes:
            self.register(n)

    def register(self, node: type[Node], source: str = "") -> type[Node]:
        """Add one node type; usable as a class decorator."""
        if not (isinstance(node, type) and issubclass(node, Node) and hasattr(node, "type_name")):
            raise RegistryError(f"{node!r} is not a node type")
        name = node.type_name
        module = self._hint.get(name)
        if module is not None and module != node.__module__:
            self._import(module)  # the declared one comes first, so a second is refused as eagerly
        existing = self._types.get(name)
        if existing is not None and existing is not node:
            raise RegistryError(
                f"node type {name!r} from {source or node.__module__} is already registered "
                f"by {self.sources.get(name) or existing.__module__}"
            )
        self._types[name] = node
        self.sources[name] = source or node.__module__
        return node

    def register_module(self, module: ModuleType | str, source: str = "") -> list[type[Node]]:
        """Register every node type a module (or package) exposes at its top level."""
        if isinstance(module, str):
            module = importlib.import_module(module)
        name = module.__name__
        found = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, Node)
            and "type_name" in obj.__dict__
            # defined in this module or its package, not imported from elsewhere
            and (obj.__module__ == name or obj.__module__.startswith(name + "."))
        ]
        for n in sorted(found, key=lambda n: n.type_name):
            self.register(n, source or module.__name__)
        return found

    def register_lazy(self, modules: Iterable[str], hint: dict[str, str], source: str = "") -> None:
        """Node modules imported when a workflow first names one of their types (``get``) or
        something lists them all: a command that checks one workflow then builds the pydantic
        models of the few modules it uses, not of a whole library (most of ``graphflow
        validate``'s time). ``hint`` says which module defines each type; a type it misses or
        misplaces makes every module load, so a stale hint costs time, never a wrong answer."""
        with self._loading:
            for module in modules:
                self._pending.setdefault(module, source)
            self._hint.update({n: m for n, m in hint.items() if m in self._pending and n not in self._types})

    def _import(self, module: str) -> None:
        with self._loading:
            source = self._pending.pop(module, None)
            if source is None:
                return
            self._hint = {n: m for n, m in self._hint.items() if m != module}
            self.register_module(importlib.import_module(module), source)

    def _import_all(self) -> None:
        while self._pending:
            self._import(next(iter(self._pending)))

    def load_plugin(self, spec: str) -> list[type[Node]]:
        """``--plugin`` accepts a module path (``my_pack.nodes``) or a file path (``./my_nodes.py``)."""
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise RegistryError(f"plugin file not found: {spec}")
            mod_name = f"graphflow_plugin_{path.stem}"
            s = importlib.util.spec_from_file_location(mod_name, path)
            assert s and s.loader
            module = importlib.util.module_from_spec(s)
            # registered before it runs, so pydantic can resolve postponed annotations in it
            sys.modules[mod_name] = module
            try:
                s.loader.exec_module(module)
            except Exception as e:
                sys.modules.pop(mod_name, None)
                raise RegistryError(f"plugin {spec} failed to load: {type(e).__name__}: {e}") from e
            return self.register_module(module, str(path))
        try:
            module = importlib.import_module(spec)
        except Exception as e:
            raise RegistryError(f"cannot import plugin {spec!r}: {type(e).__name__}: {e}") from e
        return self.register_module(module)

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            obj = ep.load()
            if isinstance(obj, ModuleType):
                self.register_module(obj, f"entry point {ep.name}")
            elif callable(obj) and not isinstance(obj, type):
                obj(self)
            else:
                self.register(obj, f"entry point {ep.name}")

    def add_read_roots(self, roots) -> None:
        """Folders a node pack's nodes read from by their own conventions (the shipped library's
        models folders and samples), which a confined executor (a server) must allow however it
        is configured: an iterable of paths, or a function giving them, called each time the
        roots are gathered (so a folder set after registering, ``--models-dir``, counts)."""
        self._read_roots.append(roots)

    def read_roots(self) -> list[Path]:
        """Every folder the node packs contributed (``add_read_roots``), in order."""
        out: list[Path] = []
        for r in self._read_roots:
            out += [Path(p) for p in (r() if callable(r) else r)]
        return out

    def add_reader(self, read) -> None:
        """A reader for workflows in another program's format, which ``run`` and ``validate`` then
        accept directly (the shipped library's reads ComfyUI prompts and pictures): called as
        ``read(json_object_or_None, png_text_chunks_or_None, source)``, it returns ``(workflow,
        params)`` for a document it knows, None for one it does not, and raises ValidationFailed
        for one it knows but cannot translate. The engine itself knows no other format."""
        self._readers.append(read)

    def readers(self) -> list:
        return list(self._readers)

    def get(self, name: str) -> type[Node] | None:
        node = self._types.get(name)
        if node is None and self._pending:
            module = self._hint.get(name)
            if module is not None:
                self._import(module)
            node = self._types.get(name)
            if node is None:  # not where the hint said, or not named in it
                self._import_all()
                node = self._types.get(name)
        return node

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __iter__(self):
        self._import_all()
        return iter(sorted(self._types.values(), key=lambda n: (n.category, n.type_name)))

    def __len__(self) -> int:
        self._import_all()
        return len(self._types)

    def names(self) -> list[str]:
        self._import_all()
        return sorted(self._types)


def default_registry(plugins: Iterable[str] = ()) -> Registry:
    """The engine's built-in nodes, every installed node pack, and any ``--plugin`` modules."""
    from graphflow.node import builtin as builtin_nodes

    reg = Registry()
    reg.register_module(builtin_nodes, "graphflow (built-in)")
    reg.load_entry_points()
    for p in plugins:
        reg.load_plugin(p)
    return reg
