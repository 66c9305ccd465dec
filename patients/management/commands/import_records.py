from pathlib import Path

from django.core import checks
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

from patients.imports import (
    KINDS,
    MappingError,
    TableError,
    read_table,
    run_import,
    suggest_mapping,
)
from patients.imports.mapping import load_mapping_file
from patients.models import ImportMapping, ImportRun

# No staff account runs a management command; the audit log names the command instead.
ACTOR = "manage.py import_records"


class Command(BaseCommand):
    help = (
        "Import patients, visits, prescriptions, procedures or appointments from a CSV or XLSX "
        "export of the clinic's HIS. Without --mapping the columns are matched by their "
        "headers; when that is not certain, the suggestion is written to a file to edit and "
        "pass back with --mapping."
    )

    # Every system check but the URL configuration's: loading it imports each view and the
    # LINE SDK's models, seconds of every run on a slow machine, and an import serves no URL.
    requires_system_checks = [
        tag
        for name, tag in vars(checks.Tags).items()
        if not name.startswith("_") and tag != checks.Tags.urls
    ]

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=sorted(KINDS))
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--mapping",
            help="A mapping JSON file (as the suggestion is written), or a saved mapping's name.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Check every row, write nothing."
        )
        parser.add_argument(
            "--encoding", help="utf-8, utf-8-sig or big5/cp950 (default: detected)."
        )
        parser.add_argument(
            "--keep-good",
            action="store_true",
            help="Import the good rows even when some are bad (default: all or nothing).",
        )
        parser.add_argument(
            "--rejects", type=Path, help="Write bad rows here (CSV, 錯誤原因 column)."
        )
        parser.add_argument(
            "--full-day",
            action="store_true",
            help="Appointments: the file is the HIS's whole list for its days; cancel the rest.",
        )
        parser.add_argument(
            "--suggestion",
            type=Path,
            help="Where to write the suggested mapping when it can't be used as is "
            "(default: FILE.mapping.json).",
        )

    def handle(self, *args, kind: str, file: Path, **options):
        if not file.is_file():
            raise CommandError(f"No such file: {file}")
        if options["keep_good"] and not options["rejects"]:
            raise CommandError("--keep-good needs --rejects FILE, so no bad row is lost.")
        columns, encoding, saved = self._mapping(kind, file, options)
        run = ImportRun.objects.create(
            kind=kind,
            file_name=file.name[:255],
            mapping=saved,
            dry_run=options["dry_run"],
            all_or_nothing=not options["keep_good"],
            full_day=options["full_day"],
        )
        with tqdm(unit=" 列", desc=file.name[:30], file=self.stderr._out, disable=None) as bar:

            def progress(rows: int) -> None:
                bar.update(rows - bar.n)

            try:
                report = run_import(
                    kind=kind,
                    path=file,
                    mapping=columns,
                    dry_run=options["dry_run"],
                    keep_good=options["keep_good"],
                    rejects_path=options["rejects"],
                    now=timezone.now(),
                    progress=progress,
                    run=run,
                    encoding=encoding,
                    full_day=options["full_day"],
                    actor=ACTOR,
                )
            except (TableError, MappingError) as exc:
                raise CommandError(exc.reason) from exc
        for error in report.errors:
            column = f"［{error.column}］" if error.column else ""
            value = f"「{error.value}」" if error.value else ""
            self.stdout.write(f"第 {error.row} 列{column}{value}：{error.reason}")
        for change in report.changes:
            if change.action == "updated":
                self.stdout.write(
                    f"第 {change.row} 列 {change.key} 更新：{'、'.join(change.fields)}"
                )
        self.stdout.write(report.summary())
        if report.rejects_path:
            self.stdout.write(f"錯誤的列已寫入 {report.rejects_path}，修正後可再匯入。")
        if report.rejected and not options["keep_good"]:
            raise CommandError(f"{report.rejected} 列有錯誤。")

    def _mapping(
        self, kind: str, file: Path, options
    ) -> tuple[dict[str, str], str | None, ImportMapping | None]:
        encoding = options["encoding"]
        given = options["mapping"]
        if given:
            saved = ImportMapping.objects.filter(name=given).first()
            if saved is not None and not Path(given).is_file():
                if saved.kind != kind:
                    raise CommandError(f"Mapping {given!r} is for {saved.kind}, not {kind}.")
                return dict(saved.columns), encoding or saved.encoding or None, saved
            try:
                mapping_kind, columns, file_encoding = load_mapping_file(given)
            except MappingError as exc:
                raise CommandError(exc.reason) from exc
            if mapping_kind and mapping_kind != kind:
                raise CommandError(f"{given} is a mapping for {mapping_kind}, not {kind}.")
            return columns, encoding or file_encoding or None, None
        try:
            with read_table(file, encoding=encoding) as table:
                suggestion = suggest_mapping(kind, table.headers)
        except TableError as exc:
            raise CommandError(exc.reason) from exc
        if suggestion.ok:
            return suggestion.columns, encoding, None
        target = options["suggestion"] or file.with_name(file.name + ".mapping.json")
        target.write_text(suggestion.to_json() + "\n", encoding="utf-8")
        self.stdout.write(suggestion.to_json())
        problems = []
        if suggestion.missing:
            labels = [KINDS[kind].field(name).label for name in suggestion.missing]
            problems.append("找不到必填欄位：" + "、".join(labels))
        for name, headers in suggestion.ambiguous.items():
            label = KINDS[kind].field(name).label
            problems.append(f"「{label}」可能是 {'、'.join(headers)}")
        raise CommandError(
            "；".join(problems) + f"。已寫入建議的欄位對應 {target}：請編輯後以 --mapping 指定。"
        )
