"""`graphflow cache`: the on-disk cache's size; prune or clear it."""

from __future__ import annotations

import argparse
import sys

from graphflow import options
from graphflow.cli import common
from graphflow.sizes import DEFAULT_CACHE_BYTES, short_size


def cmd_cache(args: argparse.Namespace) -> int:
    from graphflow.cache.disk import DiskCache
    from graphflow.sizes import format_size, parse_size

    disk = DiskCache(args.cache_dir or options.default_cache_dir(), max_bytes=None)
    if args.max_size is not None and not args.prune:
        print("graphflow cache: error: --max-size goes with --prune", file=sys.stderr)
        return options.EXIT_INVALID
    if args.clear:
        print(f"{disk.root}: removed {disk.clear()} entries")
        return options.EXIT_OK
    if args.prune:
        try:
            limit = DEFAULT_CACHE_BYTES if args.max_size is None else parse_size(args.max_size)
        except ValueError as e:
            print(f"graphflow cache: error: argument --max-size: {e}", file=sys.stderr)
            return options.EXIT_INVALID
        r = disk.prune(limit)
        tmp = f" and {r.temporaries} stray temporary file{'s' * (r.temporaries != 1)}" if r.temporaries else ""
        print(f"{disk.root}: removed {r.removed} least recently used entries ({format_size(r.freed)}){tmp}; "
              f"{r.entries} entries, {r.size / 2**20:.1f} MiB left (limit {format_size(limit)})")
        return options.EXIT_OK
    n, size = disk.usage()
    print(f"{disk.root}: {n} entries, {size / 2**20:.1f} MiB")
    return options.EXIT_OK


def add_parser(sub) -> None:
    c = sub.add_parser("cache", help="size of the on-disk cache; --prune to shrink it, --clear to empty it",
                       description="Size of the on-disk cache; --prune evicts least-recently-used entries, --clear empties it.")
    c.add_argument("--cache-dir", help="the cache folder (default: $GRAPHFLOW_CACHE_DIR or ~/.cache/graphflow)")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--clear", action="store_true", help="delete every entry")
    what.add_argument("--prune", action="store_true",
                      help="delete least-recently-used entries until the cache holds at most --max-size, and temporary "
                           "files that killed processes left over an hour ago")
    c.add_argument("--max-size", metavar="SIZE",
                   help=f"the size --prune shrinks the cache to: 500M, 4G or bytes (default: {short_size(DEFAULT_CACHE_BYTES)})")
    common.plugin_flags(c)
    c.set_defaults(func=cmd_cache, load_plugins=True)
