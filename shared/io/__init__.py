"""Files on disk: written atomically, so a reader or a crashed run never sees half a file."""
