"""What every part of postroom shares and none owns: its loggers, and the check that the
top-level names it installs (`supervisor`, `actors`, `storage`) are its own.

A leaf: it imports nothing of postroom, so every part can import it first. Its name is
prefixed because `supervisor`, `actors` and `storage` are names other code uses too.
"""

from postroom_common.imports import require_postroom_names
from postroom_common.logs import PostroomLogger, get_logger

__all__ = ["PostroomLogger", "get_logger", "require_postroom_names"]
