"""Imports every command module so that each registers itself on the app."""

from . import inspect_cmd  # noqa: F401
from . import mkimage_cmd  # noqa: F401
from . import plan_cmd  # noqa: F401
from . import apply_cmd  # noqa: F401
from . import report_cmd  # noqa: F401
