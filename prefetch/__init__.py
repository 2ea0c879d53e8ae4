"""Hot tier, eviction policies and prefetchers (later issues)."""
