from .files import write_atomic
from .html import write_page

__all__ = ["write_atomic", "write_page"]
