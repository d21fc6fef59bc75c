from .files import atomic_path, save_result, write_atomic
from .html import table, write_page

__all__ = ["atomic_path", "save_result", "table", "write_atomic", "write_page"]
