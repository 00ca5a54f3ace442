"""How a node type is declared: one pydantic ``In`` model, one ``Out`` model and a ``run`` method.

The two models are the single source of truth: the validator, ``describe``, the JSON Schema and
the cache key are all read from them, so a node author never repeats a port's type or range.
Node modules must not import torch at module level: ``graphflow validate`` imports every node
type and must stay fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic_core import PydanticUndefined

from graphflow.node.kinds import FileInput, Kind, choices_of_annotation, kind_of_annotation
from graphflow.node.limits import Limit

if TYPE_CHECKING:
    from graphflow.node.context import Context

TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
RESERVED_TYPES = ("Loop", "Map")

#: What a node may read from its context besides its inputs. Each one it declares joins its
#: fingerprint; reading one it did not declare is an error, so no value can hide from the cache.
#:   iteration: ctx.iteration / ctx.iterations (the innermost loop's index and count)
#:   device, dtype: where and in which precision models run
#:   models: ctx.models, the executor's model manager (implies device and dtype)
#:   out_dir: ctx.out_dir, the folder the node writes into
#:   workflow: ctx.workflow and ctx.params, the document and its parameter values (provenance)
CONTEXT_INPUTS = ("iteration", "device", "dtype", "models", "out_dir", "workflow")


class Inputs(BaseModel):
    """Base of a node's input model. Arbitrary types are allowed so tensor and model ports can be
    annotated ``Annotated[Any, SOME_KIND]``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True, defer_build=True)


#: the slots of a pydantic model instance, set directly by ``Node.make_inputs``
_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set, _set_extra, _set_private = (BaseModel.__dict__[n].__set__ for n in
                                             ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"))


class Outputs(BaseModel):
    """Base of a node's output model."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", defer_build=True)


@dataclass(frozen=True)
class Port:
    name: str
    kind: Kind
    description: str
    required: bool = True
    default: Any = None
    choices: tuple | None = None
    annotation: Any = None
    metadata: tuple = ()
    #: set when the input names a file or folder the node reads: its content joins the fingerprint
    file: FileInput | None = None
    #: the resource ceiling (graphflow.node.limits) the input's value may not exceed
    limit: str | None = None

    @cached_property
    def adapter(self) -> TypeAdapter:
        """Validates a literal (or a linked scalar at run time) against the field's type and range."""
        from typing import Annotated

        ann = Annotated[(self.annotation, *self.metadata)] if self.metadata else self.annotation
        return TypeAdapter(ann)

    @cached_property
    def exact_type(self) -> type | None:
        """The one type whose values ``adapter`` returns unchanged, when the field is a plain
        ``int``, ``float``, ``str`` or ``bool`` without constraints: a linked value of exactly that
        type needs no validator call (which was a tenth of a trivial node's cost)."""
        return self.annotation if not self.metadata and self.annotation in (int, float, str, bool) else None

    @property
    def validates_values(self) -> bool:
        """Ports of literal kinds are checked value by value; opaque kinds (tensors, models) are not."""
        return self.kind.literal and self.kind.name != "any"


def _ports(model: type[BaseModel], *, outputs: bool) -> dict[str, Port]:
    ports = {}
    for name, f in model.model_fields.items():
        required = f.is_required()
        default = None if required else (f.default if f.default is not PydanticUndefined else None)
        ports[name] = Port(
            name=name,
            kind=kind_of_annotation(f.annotation if not f.metadata else _annotated(f)),
            description=f.description or "",
            required=required and not outputs,
            default=default,
            choices=choices_of_annotation(f.annotation),
            annotation=f.annotation,
            metadata=tuple(f.metadata),
            file=_marker(f, FileInput),
            limit=getattr(_marker(f, Limit), "name", None),
        )
    return ports


def _defaults(model: type[BaseModel]) -> tuple[dict[str, Any], tuple]:
    defaults, factories = {}, []
    for name, f in model.model_fields.items():
        if f.alias is not None or f.validation_alias is not None:
            raise TypeError(f"{model.__qualname__}.{name}: node inputs take no aliases (a port's name is its field's name)")
        if f.default_factory is not None:
            factories.append((name, f.default_factory))
        elif f.default is not PydanticUndefined:
            defaults[name] = f.default
    return defaults, tuple(factories)


def _marker(f, cls: type) -> Any:
    """A declaration object (FileInput, Limit) in a field's ``Annotated`` metadata."""
    from typing import Annotated, get_args, get_origin

    metas = list(f.metadata)
    for a in [f.annotation, *get_args(f.annotation)]:  # Annotated[...], or Annotated inside Optional
        if get_origin(a) is Annotated:
            metas += list(get_args(a)[1:])
    return next((m for m in metas if isinstance(m, cls)), None)


def _annotated(f) -> Any:
    from typing import Annotated

    return Annotated[(f.annotation, *f.metadata)]


class Node:
    """Base class of every node type.

    Declare with class keywords::

        class Add(Node, name="Add", version=1, category="math"):
            class In(Inputs):
                a: float = Field(0.0, description="first term")
            class Out(Outputs):
                sum: float = Field(description="a + b")
            def run(self, i, ctx):
                return {"sum": i.a + i.b}

    ``pure=False`` marks a node with side effects (saving a file): it always runs and is never
    cached. ``disk_cache=False`` keeps a pure node's outputs out of the on-disk cache (cheap or
    huge values). ``uses=("iteration", "device", ...)`` declares what the node reads from its
    context (see ``CONTEXT_INPUTS``). The cache key holds ``version`` and a hash of the class's
    source, so editing ``run`` invalidates old results even if nobody bumps ``version``; bump it
    when behaviour changes through code outside the class (a helper function).
    """

    type_name: ClassVar[str]
    version: ClassVar[int]
    category: ClassVar[str]
    pure: ClassVar[bool]
    disk_cache: ClassVar[bool]
    uses: ClassVar[frozenset[str]]
    In: ClassVar[type[Inputs]]
    Out: ClassVar[type[Outputs]]
    inputs: ClassVar[dict[str, Port]]
    _defaults: ClassVar[dict[str, Any]]
    _factories: ClassVar[tuple]
    outputs: ClassVar[dict[str, Port]]

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        version: int = 1,
        category: str = "misc",
        pure: bool = True,
        disk_cache: bool = True,
        uses: tuple[str, ...] | None = None,
        abstract: bool = False,
        **kw: Any,
    ) -> None:
        super().__init_subclass__(**kw)
        if abstract:
            return
        type_name = name or cls.__name__
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not TYPE_NAME.match(type_name) or type_name in RESERVED_TYPES:
            raise TypeError(f"{where}: invalid node type name {type_name!r}")
        if not isinstance(version, int) or version < 1:
            raise TypeError(f"{where}: version must be a positive int, got {version!r}")
        for attr, base in (("In", Inputs), ("Out", Outputs)):
            model = cls.__dict__.get(attr) or getattr(cls, attr, None)
            if not (isinstance(model, type) and issubclass(model, base)):
                raise TypeError(f"{where}: must define `class {attr}({base.__name__})`")
        if "run" not in cls.__dict__ and getattr(cls, "run", None) is Node.run:
            raise TypeError(f"{where}: must define run(self, inputs, ctx)")
        cls.type_name = type_name
        cls.version = version
        cls.category = category
        cls.pure = pure
        cls.disk_cache = disk_cache and pure
        declared = frozenset(uses) if uses is not None else getattr(cls, "uses", frozenset())
        unknown = sorted(declared - set(CONTEXT_INPUTS))
        if unknown:
            raise TypeError(f"{where}: uses={unknown} is unknown; a node may use {', '.join(CONTEXT_INPUTS)}")
        if "models" in declared:
            declared |= {"device", "dtype"}
        cls.uses = declared
        cls.inputs = _ports(cls.In, outputs=False)
        cls._defaults, cls._factories = _defaults(cls.In)
        cls.outputs = _ports(cls.Out, outputs=True)
        if not cls.outputs:
            raise TypeError(f"{where}: a node needs at least one output")

    @classmethod
    def make_inputs(cls, values: dict[str, Any]) -> Inputs:
        """The ``In`` instance a run hands to ``run``: what ``In.model_construct(**values)`` builds
        (values already validated, defaults filled in), without its per-field alias handling,
        which costs more than a trivial node's whole run. ``Inputs`` declares no aliases. Its
        four slots are set through their descriptors (``_SLOTS``), found once, not by name."""
        return cls.inputs_from({**cls._defaults, **values}, set(values))

    @classmethod
    def inputs_from(cls, full: dict[str, Any], given: Any) -> Inputs:
        """``make_inputs`` for a caller that keeps ``{**cls._defaults, **literals}`` per node and
        adds the linked values to a copy of it (the runner): ``full`` is that copy, taken over;
        ``given`` the set of names the document sets (the fields set), kept by the caller and
        shared by every instance it makes (the inputs are frozen: nothing adds to it; building a
        set per call was a sixth of this call). Fields with a default factory that ``full`` lacks
        get a fresh value here, as in ``make_inputs``."""
        if cls._factories:
            for name, factory in cls._factories:
                if name not in full:
                    full[name] = factory()
        m = _new(cls.In)
        _set_dict(m, full)
        _set_fields_set(m, given)
        _set_extra(m, None)
        _set_private(m, None)
        return m

    @classmethod
    def doc(cls) -> str:
        return (cls.__doc__ or "").strip()

    @classmethod
    def summary(cls) -> str:
        """The docstring's first sentence, for listings."""
        para = " ".join(cls.doc().split("\n\n")[0].split())
        end = para.find(". ")
        return para if end < 0 else para[: end + 1]

    def run(self, inputs: Any, ctx: Context) -> dict[str, Any] | Outputs:  # pragma: no cover
        raise NotImplementedError
