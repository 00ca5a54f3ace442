"""The one import a node pack needs: declaring a node type (``Node``, ``Inputs``, ``Outputs``,
port kinds, file inputs, resource ceilings), what it sees of a run (``Context``), and the helpers
a node that reads or writes files relies on (opening an input under the run's file rules and
saying where a name was looked for, content identities for its fingerprint and work to do while a
model's files are hashed, model
references patched without touching the base, atomic and never-overwriting writes, the one 8-bit
rounding of pictures). Node packs import this module alone, never the engine's internals, so the
engine can be rearranged without breaking them (the suite's import contracts check the shipped
node library)."""

from graphflow.atomic import write_atomic, write_new
from graphflow.cache.content_ids import while_hashing
from graphflow.document.jsontext import parse_json
from graphflow.document.reader import load_json_file
from graphflow.engine.fingerprint import content_id, digest
from graphflow.engine.model_manager import load_patched
from graphflow.node.context import Cancelled, Context, UndeclaredContext
from graphflow.node.declaration import Inputs, Node, Outputs
from graphflow.node.file_access import InputFileError, InputNotFound, InputRefused, checked_input, names_in, open_input
from graphflow.node.kinds import ANY, OBJECT, TENSOR, FileInput, Kind, kind, list_of
from graphflow.node.limits import Limit
from graphflow.options import EXIT_INVALID, EXIT_OK
from graphflow.pixels import to_uint8

__all__ = [
    "EXIT_INVALID", "EXIT_OK", "load_json_file", "parse_json",  # for commands and document readers a node library contributes
    "ANY", "OBJECT", "TENSOR", "Cancelled", "Context", "FileInput", "InputFileError", "InputNotFound", "InputRefused", "Inputs",
    "Kind", "Limit", "Node", "Outputs", "UndeclaredContext", "checked_input", "content_id", "digest", "kind", "list_of",
    "load_patched", "names_in", "open_input", "to_uint8", "while_hashing", "write_atomic", "write_new",
]
