"""Which column of a file is which field: suggested from the headers, saved as JSON to edit."""

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patients.imports.kinds import KINDS


def header_key(header: str) -> str:
    """`病歷 號`, `Chart No`, `chart_no` compare by this form: NFKC, no spaces, lower case."""
    text = unicodedata.normalize("NFKC", header).casefold()
    return "".join(ch for ch in text if not ch.isspace() and ch not in "()（）:：")


@dataclass(frozen=True)
class Suggestion:
    """A proposed column → field mapping for one kind of file.

    `columns` maps every header to a field name, or "" when no field matched; `ambiguous`
    lists each field that several headers could be (all of them left unmapped); `missing`
    names required fields no header matched. `ok` when it can be used unedited.
    """

    kind: str
    columns: dict[str, str]
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.ambiguous and not self.missing

    def to_json(self) -> str:
        """The mapping file a clerk edits and passes back with --mapping."""
        spec = KINDS[self.kind]
        document: dict[str, Any] = {
            "kind": self.kind,
            "columns": self.columns,
            "fields": {f.name: f.label + ("（必填）" if f.required else "") for f in spec.fields},
        }
        if self.ambiguous:
            document["ambiguous"] = self.ambiguous
        if self.missing:
            document["missing"] = self.missing
        return json.dumps(document, ensure_ascii=False, indent=2)


def suggest_mapping(kind: str, headers: list[str]) -> Suggestion:
    """Match each header to a field of `kind` by its known spellings (Chinese or English).

    A header that matches the field's name exactly wins over one matching only an alias; two
    headers for one field are ambiguous. Raises KeyError for an unknown kind.
    """
    spec = KINDS[kind]
    candidates: dict[str, list[str]] = {}
    for header in headers:
        key = header_key(header)
        if not key:
            continue
        for field_spec in spec.fields:
            aliases = {header_key(alias) for alias in (*field_spec.aliases, field_spec.name)}
            if key in aliases:
                candidates.setdefault(field_spec.name, []).append(header)
                break
    columns = {header: "" for header in headers}
    ambiguous: dict[str, list[str]] = {}
    for name, matched in candidates.items():
        if len(matched) == 1:
            columns[matched[0]] = name
        else:
            ambiguous[name] = matched
    mapped = {name for name in columns.values() if name}
    missing = [name for name in spec.required if name not in mapped and name not in ambiguous]
    return Suggestion(kind=kind, columns=columns, ambiguous=ambiguous, missing=missing)


class MappingError(Exception):
    """A mapping that can't be used for a file; `reason` is in zh-Hant for staff."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_mapping(kind: str, headers: list[str], columns: dict[str, str]) -> dict[str, int]:
    """Field name → column index for `headers` under `columns` (header → field).

    Raises MappingError when a field is unknown, mapped twice, or required and unmapped, or
    when a mapped header is not in the file.
    """
    spec = KINDS[kind]
    known = {f.name for f in spec.fields}
    positions: dict[str, int] = {}
    for header, name in columns.items():
        if not name:
            continue
        if name not in known:
            raise MappingError(
                f"「{header[:40]}」對應的欄位 {name[:40]} 不存在於{spec.label}資料。"
            )
        if name in positions:
            raise MappingError(f"欄位「{spec.field(name).label}」對應到兩個以上的欄。")
        try:
            positions[name] = headers.index(header)
        except ValueError:
            raise MappingError(f"檔案中沒有「{header[:40]}」這一欄。") from None
    absent = [spec.field(name).label for name in spec.required if name not in positions]
    if absent:
        raise MappingError("缺少必填欄位：" + "、".join(absent))
    return positions


def load_mapping_file(path: str | Path) -> tuple[str | None, dict[str, str], str]:
    """(kind or None, columns, encoding) from a mapping JSON file as `Suggestion.to_json` writes
    it. Raises MappingError when it isn't one."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise MappingError("無法讀取對應設定檔（JSON）。") from exc
    columns = document.get("columns") if isinstance(document, dict) else None
    if not isinstance(columns, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in columns.items()
    ):
        raise MappingError("對應設定檔需要 columns：{欄名: 欄位}。")
    kind = document.get("kind")
    encoding = document.get("encoding") or ""
    return (kind if isinstance(kind, str) else None), columns, str(encoding)
