"""Resource ceilings, checked before anything runs, so that a typo (steps 30000, a 40000-pixel
image, a list of ten million seeds) is refused with a clear message instead of freezing the
machine. Nodes name the ceiling an input is subject to (``Annotated[int, Limit("steps")]``); the
values come from the executor or the command line (``--limit steps=2000``). ``depth`` is the one
ceiling no input declares: every document and parameter value is held to it (``document/depth.py``)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from graphflow.document.depth import DEFAULT_DEPTH, MAX_DEPTH


@dataclass(frozen=True)
class Limit:
    """Marks an input whose value may not exceed the named ceiling: ``Annotated[int, Limit("size")]``."""

    name: str


@dataclass(frozen=True)
class Limits:
    #: bytes of a workflow document
    document: int = 16 << 20
    #: image side in pixels (width, height)
    size: int = 2048
    #: images per batch
    batch: int = 16
    #: denoising steps
    steps: int = 500
    #: items of a list written inline or given as a parameter
    list: int = 100_000
    #: bytes of one file a run reads (a picture, a latents file, a LoRA, each file of a model
    #: folder); the default admits the largest checkpoints, a server may well lower it
    input_bytes: int = 32 << 30
    #: levels of lists and objects nesting in a workflow document or a parameter value
    depth: int = DEFAULT_DEPTH

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"the 'depth' limit is between 1 and {MAX_DEPTH}, got {self.depth}: deeper JSON cannot be written back "
                             f"(orjson's limit is 255 levels)")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_values(self, **values: int) -> Limits:
        unknown = sorted(set(values) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown limit {', '.join(unknown)} (limits: {', '.join(self.names())})")
        return replace(self, **values)


def limit_of(annotation_metadata) -> str | None:
    return next((m.name for m in annotation_metadata if isinstance(m, Limit)), None)
