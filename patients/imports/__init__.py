"""Bringing a clinic's records in from CSV/XLSX exports of its HIS.

The steps, each usable alone (the command line, the admin page and the daily feed share them):
`read_table(path)` streams a file's rows, `suggest_mapping(kind, headers)` proposes which
column is which field, and `run_import(...)` validates, matches and writes, returning an
ImportReport. KINDS declares each kind of file's fields once.
"""

from patients.imports.importer import run_import
from patients.imports.kinds import KINDS
from patients.imports.mapping import MappingError, Suggestion, check_mapping, suggest_mapping
from patients.imports.report import Change, ImportReport, RowError
from patients.imports.table import Table, TableError, read_table

__all__ = [
    "KINDS",
    "Change",
    "ImportReport",
    "MappingError",
    "RowError",
    "Suggestion",
    "Table",
    "TableError",
    "check_mapping",
    "read_table",
    "run_import",
    "suggest_mapping",
]
