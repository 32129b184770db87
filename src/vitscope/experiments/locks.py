"""The study's locks (one owner per cell, one extraction per feature store) are :mod:`vitscope.outlock`'s."""
from vitscope.outlock import CellLock, held_by, is_stale, pid_alive, read_owner, store_lock

__all__ = ["CellLock", "held_by", "is_stale", "pid_alive", "read_owner", "store_lock"]
