"""The code cache: SNAC codes of a corpus in parquet shards, and a random-access reader.

Layout of a cache directory::

    manifest.json              model id + config, hop, strides, rates, rows, hours, shards, rejected...
    cache_settings.json        what a resumed run must agree with (model config, target rate, ...)
    shard-wGGGGG-SSSSSS.parquet  one row per file (written to a temporary name, then renamed)
    _meta/rejected-wGGGGG.jsonl  files that could not be cached, with reasons (merged into the manifest)
    index-<digest>/            flat random-access copy of the shards (built once; see index.py)

Modules, in the order data flows: ``format`` (names, shard schema, manifest), ``encode`` (input
files, loading, length buckets, batch encoder), ``writer`` (shards, rejections, resume scan),
``index`` (the flat copy; ``python -m snac.cache CACHE_DIR`` builds it), ``reader``
(``CodeCache``), ``run`` (workers, devices, torchrun, progress: ``cache_codes_multigpu.py``).
"""

from .format import list_shards, read_manifest
from .index import build_index
from .reader import CodeCache
from .run import CacheConfig, run_caching
from .writer import write_synthetic_cache

__all__ = ["CacheConfig", "CodeCache", "build_index", "list_shards", "read_manifest", "run_caching",
           "write_synthetic_cache"]
