"""The sample index: Arrow tables built once per content key, written atomically, memory-mapped by workers."""
