"""The ``medssl`` subcommands, one module each: ``medssl X`` is implemented in ``commands/X.py``.

These modules hold no argparse: :mod:`medssl.cli` registers each command's flags and calls
the module's functions with plain values. Where a command runs a library that has other
users, the module is a thin entry point into it: ``pretrain`` and ``finetune`` run the
trainers of :mod:`medssl.train`, ``sweep`` runs :mod:`medssl.sweep` (protocols, also used
by the demo) and ``demo`` runs :mod:`medssl.demo` (the demo's generated protocol).
"""
