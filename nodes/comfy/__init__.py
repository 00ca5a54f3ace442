"""ComfyUI interop: a ComfyUI API-format prompt (or a ComfyUI PNG's ``prompt`` chunk) translated
into an ordinary workflow of this library's nodes, readable and editable like any other. The
engine knows nothing of ComfyUI: the library hands the reader a document hook (``document.py``)
and the CLI a command (``command.py``); ``translate.translate`` is the one function the rest
(the server's ComfyUI routes, the command, the hook) calls."""
