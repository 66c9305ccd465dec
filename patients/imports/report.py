"""What an import did, row by row: the contract between the importer and its callers."""

from dataclasses import dataclass, field

# Changes listed one by one; beyond this only counted, so memory stays flat in the file's size.
MAX_LISTED_CHANGES = 1000


@dataclass(frozen=True)
class RowError:
    """One bad cell (or row, when `column` is ""): the value masked, the reason in zh-Hant."""

    row: int
    column: str
    value: str
    reason: str


@dataclass(frozen=True)
class Change:
    """One record the import added or changed: its key (chart number or HIS number) and, for
    an update, which fields (by label) changed."""

    row: int
    key: str
    action: str  # "added" or "updated"
    fields: tuple[str, ...] = ()


@dataclass
class ImportReport:
    """Counts are exact; `errors` lists every bad row, `changes` the first MAX_LISTED_CHANGES.

    `written` says whether anything was kept: False for a dry run, and for an all-or-nothing
    run with any error.
    """

    kind: str
    checksum: str
    encoding: str
    dry_run: bool
    rows_total: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    cancelled: int = 0
    consent_entries: int = 0
    errors: list[RowError] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    written: bool = False
    rejects_path: str = ""
    note: str = ""  # a zh-Hant sentence about the run as a whole (why nothing was written)

    def summary(self) -> str:
        """One zh-Hant line for the admin, the command line and ImportRun.summary."""
        parts = [
            f"共 {self.rows_total} 列",
            f"新增 {self.added}",
            f"更新 {self.updated}",
            f"未變更 {self.unchanged}",
            f"錯誤 {self.rejected}",
        ]
        if self.cancelled:
            parts.append(f"取消預約 {self.cancelled}")
        if self.consent_entries:
            parts.append(f"同意紀錄 {self.consent_entries}")
        head = "試算（未寫入）" if self.dry_run else ("已匯入" if self.written else "未匯入")
        line = f"{head}：" + "，".join(parts)
        return f"{line}。{self.note}" if self.note else line + "。"
