"""Where results live between runs: the in-memory LRU, the on-disk safetensors cache, and the index one run sees of both."""
