"""run: plan → results. Executes the planned steps in order (scopes, Loop and Map at any depth:
``scope_run.py``), emits events, stores what it computed. It never re-plans inside a scope; at the top level it
fingerprints late members when their inputs exist, and re-plans once a cache entry it counted on
turns out damaged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from graphflow.cache.memory import NUMBERS
from graphflow.cache.run_caches import RunCaches
from graphflow.document.tree import Link, LinkList, Lit, NodeDef, ParamRef, Ref, ScopeDef
from graphflow.engine import events as ev
from graphflow.engine.plan import Fingerprints, Plan, plan, shape
from graphflow.engine.results import NodeError, NodeStat, RunResult
from graphflow.engine.scope_run import ScopeRunner
from graphflow.node.context import Cancelled, Context
from graphflow.node.declaration import Outputs
from graphflow.node.file_access import InputFileError

_LITERAL, _PARAM, _LINK, _LINKS = range(4)  # how a node input is read
_TOP: list = []  # the frames of a top-level node: none (never appended to)
_new = object.__new__


class Unloadable(Exception):
    """A cache entry the plan counted on could not be loaded (damaged, or deleted meanwhile).
    Its own class: a KeyError from a node must never pass for it."""


def non_finite(outputs: dict[str, Any]) -> str | None:
    """The first output holding NaN or Inf, by duck typing (the engine knows no tensor library):
    a float, or anything with ``isfinite()`` (tensors, arrays), or a list of those."""
    for name, v in outputs.items():
        for x in v if isinstance(v, (list, tuple)) else (v,):
            if isinstance(x, float):
                bad = x != x or x in (float("inf"), float("-inf"))
            elif hasattr(x, "isfinite") and hasattr(x, "dtype"):
                bad = not bool(x.isfinite().all())
            else:
                continue
            if bad:
                return name
    return None


def _outputs_dict(out: Any, cls) -> dict[str, Any]:
    if isinstance(out, Outputs):
        out = dict(out.__dict__)
    if not isinstance(out, dict):
        raise TypeError(f"run() returned {type(out).__name__}, expected a dict of outputs")
    for name in cls.outputs:
        if name not in out:
            missing = cls.outputs.keys() - out.keys()
            raise TypeError(f"run() did not return output(s) {', '.join(sorted(missing))}")
    return out


class Runner:
    """One run. ``emit`` gets every event (the executor records them for the run's handle and
    forwards them to listeners); with None, or an emit that is false (no one hears: an
    ``Emitter``), no event is even built."""

    def __init__(self, keys: Fingerprints, stores: RunCaches, run_id: str, cancel, models: Any,
                 emit: Callable[[ev.Event], None] | None, check_finite: bool = False, preview_every: int = 0,
                 preview_decoder: Any = None) -> None:
        self.check_finite = check_finite
        self.preview_every = preview_every
        self.keys, self.c, self.b = keys, keys.checked, keys.bound
        self.stores = stores
        self.run_id = run_id
        self.cancel = cancel
        self.emit = emit
        self.values: dict[str, dict[str, Any]] = stores.done  # what this run computed, by member
        self.by_key: dict[str, str] | None = None  # see run_top
        self.shape = shape(self.c)
        self.specs = self.c.memo.input_specs
        self.recs = _records(self.c, self.shape, self.inputs_of)
        self.stats: dict[str, NodeStat] = {}
        self.errors: list[NodeError] = []
        self.failed: dict[str, str] = {}
        self.root_cause: dict[str, str] = {}
        o = keys.options
        self.access = keys.access
        self.ctx_values = {"iteration": None, "iterations": None, "device": o.device, "dtype": o.dtype, "models": models,
                           "out_dir": o.out_dir, "workflow": self.c.doc.raw, "params": self.b.params, "files": keys.access}
        if preview_every and emit is not None:
            self.ctx_values["preview"] = self.preview
            self.ctx_values["preview_decoder"] = preview_decoder

    def preview(self, node: str, step: int, steps: int | None, make: Callable[[], tuple[bytes, int, int]]) -> None:
        """A node's offered preview (``Context.preview``): made and emitted at every
        ``preview_every``-th step (the N-th, 2N-th, ...), else never made."""
        if (step + 1) % self.preview_every or not self.emit:  # not this step, or no one would see it
            return
        png, w, h = make()
        self.emit(ev.Preview(node, step, steps, png, w, h, self.run_id))

    def stat(self, nid: str) -> NodeStat:
        s = self.stats.get(nid)
        if s is None:
            s = self.stats[nid] = NodeStat(self.c.nodes[nid].type)
        return s

    # --- values --------------------------------------------------------------------------------

    def resolve(self, ref: Ref, nid: str, fld: str, frames: list[dict[str, dict[str, Any]]]) -> Any:
        if isinstance(ref, Link):
            for f in reversed(frames):
                src = f.get(ref.node)
                if src is not None:
                    return src[ref.port]
            return self.values[ref.node][ref.port]
        if isinstance(ref, LinkList):
            return [self.resolve(x, nid, fld, frames) for x in ref.links]
        return self.b.value(nid, fld) if isinstance(ref, (Lit, ParamRef)) else ref

    def inputs_of(self, d: NodeDef) -> tuple:
        """(its literal inputs over the class's defaults as a dict, the names of the inputs the
        document sets, per other input: (name, field, ref, how to read it, the adapter that checks
        a linked value, the file marker of a linked file input, the type a linked value may have
        to pass unchecked: ``Port.exact_type``)). Kept with the checked graph: the same for every
        run of the document."""
        spec = self.specs.get(d.id)
        if spec is None:
            cls = self.c.types[d.id]
            ports, literals, out = cls.inputs, dict(cls._defaults), []
            for name, ref in d.inputs.items():
                fld = f"inputs.{name}"
                how = _LITERAL if type(ref) is Lit else _PARAM if type(ref) is ParamRef else _LINK if type(ref) is Link else _LINKS
                if how == _LITERAL:
                    literals[name] = self.c.literals.get((d.id, fld))
                    continue
                linked = how in (_LINK, _LINKS)
                check = ports[name].adapter if linked and ports[name].validates_values else None
                out.append((name, fld, ref, how, check, ports[name] if linked and ports[name].file is not None else None,
                            ports[name].exact_type))
            spec = self.specs[d.id] = (literals, set(d.inputs), tuple(out))
        return spec

    def check_file(self, nid: str, type_name: str, name: str, port, value: Any, iteration: int | None = None) -> None:
        """A file input's value that validation could not see (it came through a link), held to
        the same rules, in the same words: the node fails naming the input."""
        try:
            self.access.locate(port.file, value)
        except InputFileError as e:
            raise NodeError(nid, type_name, f"input '{name}': {e}", iteration, exc_type=e.code) from None

    def call(self, d: NodeDef, frames: list, iteration: int | None = None, count: int | None = None,
             cls: Any = None) -> dict[str, Any]:
        nid = d.id
        if cls is None:
            cls = self.c.types[nid]
        literals, given, linked = self.specs.get(nid) or self.inputs_of(d)
        kwargs = literals.copy()  # a node's defaults and literal inputs never change: copied whole
        values = self.values
        for name, fld, ref, how, check, file_port, exact in linked:
            if how == _PARAM:
                kwargs[name] = self.b.values[(nid, fld)]
                continue
            v = values[ref.node][ref.port] if how == _LINK and not frames else self.resolve(ref, nid, fld, frames)
            if check is not None and type(v) is not exact:
                try:
                    v = check.validate_python(v)
                except ValidationError as e:
                    raise NodeError(d.id, cls.type_name, f"input '{name}' received {v!r} from '{ref}': "
                                    f"{e.errors()[0]['msg']}", iteration, exc_type="ValidationError") from None
            if file_port is not None:
                self.check_file(d.id, cls.type_name, name, file_port, v, iteration)
            kwargs[name] = v
        ctx_values = self.ctx_values
        if iteration is not None:
            ctx_values = {**ctx_values, "iteration": iteration, "iterations": count}
        ctx = _new(Context)  # Context._make, inlined
        ctx.node_id, ctx.node_type, ctx.cancel_event, ctx._declared, ctx._values = nid, cls.type_name, self.cancel, cls.uses, ctx_values
        try:
            out = cls().run(cls.inputs_from(kwargs, given), ctx)
            if type(out) is not dict or not out.keys() >= cls.outputs.keys():
                out = _outputs_dict(out, cls)
        except (Cancelled, NodeError):
            raise
        except Exception as e:
            raise NodeError.wrap(d.id, cls.type_name, e, iteration) from None
        if self.check_finite and (bad := non_finite(out)) is not None:
            raise NodeError(d.id, cls.type_name, f"output '{bad}' holds NaN or Inf", iteration, exc_type="NonFinite")
        return out

    # --- the top level ---------------------------------------------------------------------------

    def late_key(self, m: str) -> str | None:
        """Fingerprint a late member now that its producers ran: file inputs by what they name,
        each checked first (what it names is hashed, so it must be a file the run may read)."""
        d = self.c.nodes[m]
        files = None
        if isinstance(d, NodeDef):
            cls = self.c.types[m]
            files = {}
            for k, r in d.inputs.items():
                port = cls.inputs[k]
                if port.file is None or isinstance(r, LinkList):
                    continue
                v = self.resolve(r, m, f"inputs.{k}", [])
                self.check_file(m, cls.type_name, k, port, v)
                if isinstance(r, Link):
                    files[k] = v
        return self.keys.member(m, files)

    def run_top(self, m: str, p: Plan) -> str | None:
        """Runs or loads one member; returns where it was loaded from, or None if it ran.
        Raises Unloadable when a planned cache entry could not be loaded (then re-plan)."""
        d, pure, to_disk = self.recs[m][:3]
        fp = p.fps[m]
        where = p.hits.get(m)
        twin = None
        if fp is None:
            fp = self.late_key(m)
            if fp is not None and pure:  # a late member: looked up now, first among what this run holds
                if self.by_key is None:  # member by fingerprint (the first of equals), made at the first late member
                    self.by_key = {f: x for x, f in reversed(self.keys.fps.items()) if f is not None}
                x = self.by_key.setdefault(fp, m)
                twin = x if x != m and x in self.values else None
                where = "run" if twin is not None else self.stores.lookup(fp, m, self.wanted(m, p))
        emit = self.emit if self.emit else None  # asked once per node: built only if someone hears
        if emit is not None:
            emit(ev.NodeStarted(m, d.type, None, self.run_id))
        t0 = time.perf_counter()
        s = self.stats.get(m)
        if s is None:
            s = self.stats[m] = NodeStat(d.type)
        stores = self.stores
        if where:
            out = self.values[twin] if twin is not None else stores.load(fp, where, self.wanted(m, p), self.shape.ports[m])
            if out is None:
                raise Unloadable(m)
            s.hits += 1
            if where != "run":
                s.status = where
        else:
            # a scope's hoisting state lives as long as the scope's run: built per top-level scope
            out = ScopeRunner(self).run_scope(d, []) if type(d) is ScopeDef else self.call(d, _TOP)
            s.runs += 1
            s.status = "ran"
            if fp is not None and pure:
                stores.store(fp, out, to_disk)
        dt = time.perf_counter() - t0
        s.seconds += dt
        self.values[m] = out
        if emit is not None:
            emit(ev.NodeFinished(m, d.type, dt, where if where != "run" else None, None, self.run_id))
        return where

    def wanted(self, m: str, p: Plan) -> set[str]:
        """The output ports of ``m`` this run reads."""
        return self.shape.ports[m] if "*" in p.consumed[m] else p.consumed[m]

    def execute(self, p: Plan) -> RunResult:
        t0 = time.perf_counter()
        if self.emit:
            self.emit(ev.RunStarted(len(p.steps), self.run_id))
        cancelled = False
        preds = self.c.preds[None]
        holds_pins = getattr(self.ctx_values["models"], "holds_pins", None)
        holds_pins = holds_pins if callable(holds_pins) else None
        pinned = False  # no member that may pin a model has run yet: nothing to unpin
        # the loop below runs once per member: what it reads is hoisted into locals
        values, failed, stats, recs = self.values, self.failed, self.stats, self.recs
        stores, is_set, call, perf_counter = self.stores, self.cancel.is_set, self.call, time.perf_counter
        store, memory_put, memory_get, small = stores.store, stores.memory.put, stores.memory.get, stores.small
        to_disk_here = stores.disk is not None
        # a member that simply runs (no one hears its events, no finiteness check, not loaded, its
        # key known) takes the short path: run_top and release inlined; so does one loaded from
        # the memory cache. Whether anyone hears is asked per node (a listener may subscribe
        # mid-run), from the emitter's lists when it has them
        watched = (), ()
        if self.emit is not None:
            asks = getattr(self.emit, "watched", None)
            watched = asks() if asks is not None else None
        plain = watched is not None and not self.check_finite
        sync, off = watched or ((), ())
        bvalues, cancel, ctx_values = self.b.values, self.cancel, self.ctx_values
        steps, replan = p.steps, True
        get_many = getattr(stores.memory, "get_many", None)
        if (plain and not sync and not off and get_many is not None and steps and len(p.hits) == len(steps)
                and set(p.hits.values()) == {"memory"} and not is_set()):
            # a fully cached run (every step a memory hit): loaded in one go, no step taken
            loaded = get_many([p.fps[m] for m in steps])
            if loaded is not None:
                values.update(zip(steps, loaded))
                for m in steps:
                    stats[m] = s = _new(NodeStat)
                    s.type, s.runs, s.hits, s.seconds, s.status = recs[m][6], 0, 1, 0.0, "memory"
                steps = []
        while replan:  # once, and again after each re-plan (a cache entry counted on was damaged)
            replan = False
            fps, hits, rem = p.fps, p.hits, p.remaining
            for k, m in enumerate(steps, 1):
                if is_set():
                    cancelled = True
                    break
                if failed and (blocked := [x for x in preds[m] if x in failed]):
                    self.root_cause[m] = root = self.root_cause.get(blocked[0], blocked[0])
                    failed[m] = f"skipped because '{root}' failed"
                    self.stat(m).status = "skipped"
                    continue
                d, pure, to_disk, producers, cls, may_pin, type_name, literals, given, linked, out_keys = recs[m]
                if may_pin:
                    pinned = True
                try:
                    fp = fps[m]
                    if plain and not sync and not off and cls is not None and fp is not None and m not in hits:
                        t1 = perf_counter()
                        # call(), inlined for inputs read as they are: literals, parameters, links
                        # whose value needs no check; any other input takes call()'s general reading
                        kwargs = literals.copy()
                        for name, fld, ref, how, check, file_port, exact in linked:
                            if how == _LINK and file_port is None:
                                v = values[ref.node][ref.port]
                                if check is None or type(v) is exact:
                                    kwargs[name] = v
                                    continue
                            elif how == _PARAM:
                                kwargs[name] = bvalues[(m, fld)]
                                continue
                            out = call(d, _TOP, None, None, cls)
                            break
                        else:
                            ctx = _new(Context)
                            ctx.node_id, ctx.node_type, ctx.cancel_event, ctx._declared, ctx._values = (
                                m, cls.type_name, cancel, cls.uses, ctx_values)
                            try:
                                out = cls().run(cls.inputs_from(kwargs, given), ctx)
                                if type(out) is not dict or not out.keys() >= out_keys:
                                    out = _outputs_dict(out, cls)
                            except (Cancelled, NodeError):
                                raise
                            except Exception as e:
                                raise NodeError.wrap(m, cls.type_name, e, None) from None
                        if pure:
                            if to_disk and to_disk_here:
                                store(fp, out, True)
                            else:  # RunCaches.store's memory-only case: numbers wait for the run's end
                                for v in out.values():
                                    if type(v) not in NUMBERS:
                                        memory_put(fp, out)
                                        break
                                else:
                                    small[fp] = out
                        values[m] = out
                        # a step runs once (a re-plan leaves out what ran or failed): its stat is
                        # new, NodeStat(type_name, 1, 0, seconds, "ran") without its __init__ call
                        stats[m] = s = _new(NodeStat)
                        s.type, s.runs, s.hits, s.seconds, s.status = type_name, 1, 0, perf_counter() - t1, "ran"
                        for x in producers:  # release(), inlined
                            rem[x] = n = rem[x] - 1
                            if not n:
                                values.pop(x, None)
                    elif plain and not sync and not off and hits.get(m) == "memory" and (out := memory_get(fp)) is not None:
                        values[m] = out  # run_top's memory hit, inlined (a fully cached run is mostly these)
                        stats[m] = s = _new(NodeStat)
                        s.type, s.runs, s.hits, s.seconds, s.status = type_name, 0, 1, 0.0, "memory"  # no time to speak of
                    elif self.run_top(m, p) is None:
                        self.release(m, p)
                except Unloadable:  # a damaged entry: plan the rest again around it
                    stores.flush()
                    p = plan(self.keys, self.stores)
                    steps = [x for x in p.steps if x not in values and x not in failed]
                    replan = True
                    break
                except Cancelled:
                    self.stat(m)  # counted as pending, as run_top counts it before it runs a member
                    cancelled = True
                    break
                except NodeError as e:
                    # the error outlives the run in its result: it must not keep the failed run's
                    # frames (and their tensors) alive; its text traceback is kept
                    e.__traceback__ = e.__context__ = e.__cause__ = None
                    self.errors.append(e)
                    failed[m] = str(e)
                    self.stat(m).status = "failed"
                    if e.node != m:
                        self.stat(e.node).status = "failed"
                    if self.emit:
                        self.emit(ev.NodeFailedEvent(e.node, e.type, e.message, self.run_id))
                    continue
                if pinned and holds_pins is not None and holds_pins():
                    self.unpin_unreachable(steps[k:])
        stores.flush()
        outputs, missing = {}, {}
        for name, link in self.c.doc.outputs.items():
            if link.node in self.values:
                vals = self.values[link.node]
                outputs[name] = dict(vals) if link.port == "*" else vals[link.port]
            else:
                missing[name] = self.failed.get(link.node, "the run was cancelled" if cancelled else "not run")
        dt = time.perf_counter() - t0
        if self.emit:
            self.emit(ev.RunFinished(dt, not self.errors and not cancelled, cancelled, self.run_id))
        return RunResult(outputs, self.errors, self.stats, cancelled, dt, missing, self.run_id, self.stores.errors)

    def unpin_unreachable(self, rest: list[str]) -> None:
        """Called after each step while the run holds pinned models (``holds_pins``). Tell the model manager which of this run's models the members still to run can reach
        (the model references on the ports they read); the others may be evicted under the
        budget. Only the ports read count: LoadModel's output holds every component until the
        decoder runs, but once the prompts are encoded no one reads its text encoders."""
        models = self.ctx_values["models"]
        live: set = set()
        for x in rest:
            if x in self.values or x in self.failed:
                continue
            d = self.c.nodes[x]
            for link in _links(d):
                vals = self.values.get(link.node)
                if vals is None:
                    continue
                for v in (vals.values() if link.port == "*" else (vals.get(link.port),)):
                    _collect_refs(v, live)
        models.keep_only(live)

    def release(self, m: str, p: Plan) -> None:
        """Drop a producer's outputs once its last consumer has run (the cache may still hold them;
        a member whose outputs the caller gets is never counted down to zero: ``Plan.remaining``)."""
        rem = p.remaining
        for x in self.recs[m][3]:
            rem[x] = n = rem[x] - 1
            if not n:
                self.values.pop(x, None)


def _records(c, sh, spec_of: Callable[[NodeDef], tuple]) -> dict[str, tuple]:
    """Per top-level member: (its definition, whether it is pure, whether its entry goes to disk,
    its producers, its node class (None for a scope), whether running it may pin a model (a
    scope, or a node that declares ``models``), its type name, then how it reads its inputs
    (``Runner.inputs_of``'s three parts) and the names of its outputs (for a scope: Nones)), kept
    with the checked graph: what the runner reads of a member at its turn, in one record (at 10,000
    nodes the cost is mostly memory touched per node)."""
    recs = c.memo.top_records
    if recs is None:
        preds, types = c.preds[None], c.types
        recs = {}
        for m in sh.members:
            d = c.nodes[m]
            cls = None if type(d) is ScopeDef else types[m]
            recs[m] = (d, sh.pure[m], sh.to_disk[m], tuple(preds[m]), cls, cls is None or "models" in cls.uses, d.type,
                       *((None, None, None) if cls is None else spec_of(d)), None if cls is None else cls.outputs.keys())
        c.memo.top_records = recs
    return recs


def _links(d: Any):
    """Every link a member reads, a scope's body included (conservatively: all of its parts)."""
    if isinstance(d, ScopeDef):
        for r in (d.over, *d.carry.values(), *d.next.values(), *d.collect.values()):
            yield from _ref_links(r)
        for inner in d.body.values():
            yield from _links(inner)
        return
    for _, r in d.refs():
        yield from _ref_links(r)


def _ref_links(r: Any):
    if isinstance(r, Link):
        yield r
    elif isinstance(r, LinkList):
        yield from r.links


def _collect_refs(v: Any, out: set, depth: int = 0) -> None:
    """The model references (objects with ``load``) in a port's value, inside lists and dicts too."""
    if callable(getattr(v, "load", None)) and not isinstance(v, type):
        try:
            out.add(v)
        except TypeError:
            pass
    elif depth < 3 and isinstance(v, (list, tuple)):
        for x in v:
            _collect_refs(x, out, depth + 1)
    elif depth < 3 and isinstance(v, dict):
        for x in v.values():
            _collect_refs(x, out, depth + 1)
