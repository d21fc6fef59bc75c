"""Results: the Result base class every method returns, atomic files, the one output rule, self-contained HTML."""
from lmscope.results.base import Result, result_kinds, to_plain
from lmscope.results.files import atomic_path, write_atomic
from lmscope.results.html import table, transcripts, write_page
from lmscope.results.output import check_output

__all__ = ["Result", "atomic_path", "check_output", "result_kinds", "table", "to_plain",
           "transcripts", "write_atomic", "write_page"]
