"""The `mldm` command (``main``), its config layer (``config``) and the sample / evaluate commands (``commands``).
Kept empty so that `mldm --help` imports nothing heavy."""
