import pytest

from patients.imports import TableError, read_table, suggest_mapping
from patients.imports.table import MAX_CELL_CHARS
from tests.patients.imports.files import PATIENT_HEADERS, patient_row, write_csv, write_xlsx


@pytest.mark.parametrize(
    ("written_as", "detected"), [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("cp950", "cp950")]
)
def test_encoding_is_detected_and_chinese_read_back(tmp_path, written_as, detected):
    rows = [patient_row(n, name="陳碁銹") for n in range(1, 200)]
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, rows, encoding=written_as)

    with read_table(path) as table:
        read = list(table.rows())

    assert table.encoding == detected
    assert table.headers == PATIENT_HEADERS  # no BOM left on the first header
    assert read[0].number == 2 and read[0].cells[1] == "陳碁銹"
    assert len(read) == 199


def test_encoding_can_be_chosen(tmp_path):
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, [patient_row(1)], encoding="cp950")

    with read_table(path, encoding="big5") as table:
        assert table.encoding == "cp950"
        assert list(table.rows())[0].cells[1] == "測試1號"


def test_wrong_encoding_is_a_table_error_in_chinese(tmp_path):
    path = write_csv(tmp_path / "p.csv", PATIENT_HEADERS, [patient_row(1)], encoding="cp950")

    with pytest.raises(TableError, match="編碼"):
        with read_table(path, encoding="utf-8") as table:
            list(table.rows())


def test_xlsx_rows_stream_as_text_with_dates_and_numbers(tmp_path):
    import datetime as dt

    path = write_xlsx(
        tmp_path / "p.xlsx",
        PATIENT_HEADERS,
        [["C000001", "王小明", "M", dt.datetime(1960, 3, 15), 912345678.0, "A123456789"]],  # noqa: DTZ001
    )

    with read_table(path) as table:
        (row,) = list(table.rows())

    assert table.encoding == "xlsx"
    assert row.cells == ["C000001", "王小明", "M", "1960-03-15", "912345678", "A123456789"]


def test_ragged_and_blank_rows(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,c\n1,2\n\n,,\n1,2,3,4\n", encoding="utf-8")

    with read_table(path) as table:
        rows = list(table.rows())

    assert [(r.number, r.cells) for r in rows] == [(2, ["1", "2"]), (5, ["1", "2", "3", "4"])]


def test_a_10_mb_cell_is_a_row_error_and_reading_goes_on(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("a,b\n1," + "x" * 10_000_000 + "\n2,ok\n", encoding="utf-8")

    with read_table(path) as table:
        rows = list(table.rows())

    assert rows[0].number == 2 and rows[0].error and str(f"{MAX_CELL_CHARS:,}") in rows[0].error
    assert rows[1].cells == ["2", "ok"]


def test_not_a_table(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(TableError):
        read_table(path)


def test_suggestion_from_chinese_and_english_headers():
    chinese = suggest_mapping("patients", ["病歷號碼", "姓名", "生日", "行動電話", "其他"])
    english = suggest_mapping("patients", ["Chart No", "Name", "DOB", "Mobile"])

    assert chinese.ok and english.ok
    assert chinese.columns == {
        "病歷號碼": "chart_no",
        "姓名": "name",
        "生日": "birth_date",
        "行動電話": "phone",
        "其他": "",
    }
    assert english.columns["Chart No"] == "chart_no"


def test_suggestion_names_ambiguous_and_missing_columns():
    suggestion = suggest_mapping("patients", ["病歷號", "電話", "手機"])

    assert not suggestion.ok
    assert suggestion.ambiguous == {"phone": ["電話", "手機"]}
    assert suggestion.missing == ["name"]
    assert suggestion.columns["電話"] == "" and suggestion.columns["手機"] == ""
