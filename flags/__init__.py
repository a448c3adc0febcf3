"""absl flag definitions of the entry points, and their translation into config objects."""
