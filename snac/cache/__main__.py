"""``python -m snac.cache CACHE_DIR [--force]``: (re)build the flat random-access index of a cache."""

from .index import main

main()
