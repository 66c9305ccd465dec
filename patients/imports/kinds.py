"""Each import kind declared once: its fields, which are required, the headers that name them.

A header matches a field when its normalised form (NFKC, no spaces, lower case) is one of the
field's aliases; Chinese and English spellings from common HIS exports are listed. The parser
of each field is named by `parse` (patients.imports.cells.PARSERS).
"""

from dataclasses import dataclass

from patients.models import ImportKind


@dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str  # zh-Hant, shown to staff in errors and in the mapping step
    parse: str  # key of cells.PARSERS
    required: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class KindSpec:
    kind: str
    label: str
    fields: tuple[FieldSpec, ...]

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.fields if spec.required)


CHART_NO = FieldSpec(
    "chart_no",
    "病歷號",
    "chart_no",
    required=True,
    aliases=("病歷號", "病歷號碼", "病歷編號", "病歷", "chartno", "chart_no", "chartnumber", "mrn"),
)
EXTERNAL_ID = FieldSpec(
    "external_id", "HIS 編號", "identifier", aliases=("his編號", "externalid", "external_id")
)

# Explicit consent columns: only these ever create consent (never inferred from a phone column).
CONSENT_FIELDS = (
    FieldSpec(
        "consent_purpose",
        "同意目的",
        "consent_purposes",
        aliases=("同意目的", "同意項目", "consentpurpose", "consent_purpose"),
    ),
    FieldSpec(
        "consent_channel",
        "同意管道",
        "consent_channels",
        aliases=("同意管道", "同意通知管道", "consentchannel", "consent_channel"),
    ),
    FieldSpec(
        "consent_date",
        "同意日期",
        "date",
        aliases=("同意日期", "同意簽署日期", "consentdate", "consent_date"),
    ),
    FieldSpec(
        "consent_evidence",
        "同意書編號",
        "text",
        aliases=(
            "同意書編號",
            "同意依據",
            "同意書",
            "consentevidence",
            "consent_evidence",
            "consentref",
        ),
    ),
    FieldSpec(
        "consent_action",
        "同意或撤回",
        "consent_action",
        aliases=("同意或撤回", "同意狀態", "consentaction", "consent_action"),
    ),
)

PATIENTS = KindSpec(
    ImportKind.PATIENTS,
    "病人",
    (
        CHART_NO,
        FieldSpec(
            "name",
            "姓名",
            "name",
            required=True,
            aliases=("姓名", "病人姓名", "name", "fullname", "patientname"),
        ),
        FieldSpec("sex", "性別", "sex", aliases=("性別", "sex", "gender")),
        FieldSpec(
            "birth_date",
            "出生日期",
            "birth_date",
            aliases=(
                "出生日期",
                "生日",
                "出生年月日",
                "birthdate",
                "birth_date",
                "dob",
                "birthday",
            ),
        ),
        FieldSpec(
            "phone",
            "電話",
            "phone",
            aliases=(
                "電話",
                "手機",
                "行動電話",
                "聯絡電話",
                "電話號碼",
                "phone",
                "mobile",
                "tel",
                "cellphone",
            ),
        ),
        FieldSpec(
            "email",
            "電子郵件",
            "email",
            aliases=("電子郵件", "email", "e-mail", "信箱", "電子信箱"),
        ),
        FieldSpec(
            "national_id",
            "身分證號",
            "national_id",
            aliases=(
                "身分證號",
                "身分證字號",
                "身份證號",
                "身份證字號",
                "身分證",
                "居留證號",
                "nationalid",
                "national_id",
                "idno",
            ),
        ),
        FieldSpec(
            "line_user_id",
            "LINE 使用者 ID",
            "line_user_id",
            aliases=("lineuserid", "line_user_id", "lineid"),
        ),
        FieldSpec(
            "caregiver_contact",
            "家屬聯絡人",
            "text",
            aliases=(
                "家屬聯絡人",
                "緊急聯絡人",
                "聯絡人",
                "caregiver",
                "caregiver_contact",
                "emergencycontact",
            ),
        ),
        FieldSpec(
            "notes", "備註", "multiline", aliases=("備註", "註記", "notes", "note", "remarks")
        ),
        *CONSENT_FIELDS,
    ),
)

VISITS = KindSpec(
    ImportKind.VISITS,
    "就診",
    (
        CHART_NO,
        FieldSpec(
            "visited_on",
            "就診日期",
            "date",
            required=True,
            aliases=("就診日期", "看診日期", "就醫日期", "日期", "visitdate", "visited_on", "date"),
        ),
        FieldSpec(
            "department",
            "科別",
            "text",
            required=True,
            aliases=("科別", "就診科別", "department", "dept"),
        ),
        FieldSpec(
            "doctor",
            "醫師",
            "text",
            required=True,
            aliases=("醫師", "看診醫師", "醫師姓名", "doctor", "physician"),
        ),
        FieldSpec(
            "diagnosis_codes",
            "診斷碼",
            "diagnosis_codes",
            aliases=("診斷碼", "診斷代碼", "icd10", "icd", "diagnosis", "diagnosis_codes"),
        ),
        FieldSpec("note", "備註", "multiline", aliases=("備註", "就診備註", "note", "notes")),
        FieldSpec(
            "external_id",
            "就診編號",
            "identifier",
            aliases=("就診編號", "就診序號", "visitno", "visitid", "external_id"),
        ),
    ),
)

PRESCRIPTIONS = KindSpec(
    ImportKind.PRESCRIPTIONS,
    "處方",
    (
        CHART_NO,
        FieldSpec(
            "drug",
            "藥品名稱",
            "text",
            required=True,
            aliases=("藥品名稱", "藥名", "藥品", "drug", "drugname", "medication"),
        ),
        FieldSpec(
            "dose", "劑量", "text", required=True, aliases=("劑量", "用量", "dose", "dosage")
        ),
        FieldSpec(
            "frequency",
            "頻率",
            "frequency",
            required=True,
            aliases=("頻率", "用法", "服用頻率", "frequency", "freq"),
        ),
        FieldSpec(
            "start_date",
            "開始日期",
            "date",
            required=True,
            aliases=("開始日期", "開立日期", "處方日期", "startdate", "start_date"),
        ),
        FieldSpec(
            "days_supplied",
            "給藥天數",
            "days_supplied",
            required=True,
            aliases=("給藥天數", "天數", "日數", "dayssupplied", "days_supplied", "days"),
        ),
        FieldSpec(
            "refills",
            "慢箋可調劑次數",
            "refills",
            aliases=("慢箋可調劑次數", "慢箋次數", "連續處方次數", "refills"),
        ),
        FieldSpec(
            "external_id",
            "處方編號",
            "identifier",
            aliases=("處方編號", "處方序號", "rxno", "prescriptionid", "external_id"),
        ),
    ),
)

PROCEDURES = KindSpec(
    ImportKind.PROCEDURES,
    "處置",
    (
        CHART_NO,
        FieldSpec(
            "procedure_type",
            "處置名稱",
            "text",
            required=True,
            aliases=("處置名稱", "手術名稱", "處置", "手術", "procedure", "procedure_type"),
        ),
        FieldSpec(
            "performed_at",
            "處置時間",
            "datetime",
            required=True,
            aliases=("處置時間", "手術時間", "處置日期", "手術日期", "performedat", "performed_at"),
        ),
        FieldSpec(
            "discharged_at",
            "出院時間",
            "datetime",
            aliases=("出院時間", "出院日期", "離院時間", "dischargedat", "discharged_at"),
        ),
        FieldSpec(
            "care_plan_key",
            "術後照護計畫",
            "slug",
            aliases=("術後照護計畫", "照護計畫", "careplan", "care_plan_key"),
        ),
        FieldSpec(
            "external_id",
            "處置編號",
            "identifier",
            aliases=("處置編號", "處置序號", "procedureid", "external_id"),
        ),
    ),
)

APPOINTMENTS = KindSpec(
    ImportKind.APPOINTMENTS,
    "預約",
    (
        CHART_NO,
        # The HIS's booking number: the only safe way to tell a moved booking from a new one.
        FieldSpec(
            "external_id",
            "預約編號",
            "identifier",
            required=True,
            aliases=(
                "預約編號",
                "預約號",
                "掛號編號",
                "預約序號",
                "bookingno",
                "appointmentid",
                "external_id",
            ),
        ),
        FieldSpec(
            "starts_at",
            "預約時間",
            "datetime",
            required=True,
            aliases=(
                "預約時間",
                "預約日期",
                "看診時間",
                "看診日期",
                "startsat",
                "starts_at",
                "appointmentdate",
                "date",
            ),
        ),
        FieldSpec("time", "時段", "time", aliases=("時段", "預約時段", "時間", "time")),
        FieldSpec(
            "department", "科別", "text", required=True, aliases=("科別", "department", "dept")
        ),
        FieldSpec(
            "doctor",
            "醫師",
            "text",
            required=True,
            aliases=("醫師", "看診醫師", "doctor", "physician"),
        ),
        FieldSpec("location", "診間", "text", aliases=("診間", "地點", "location", "room")),
        FieldSpec(
            "bring_notes",
            "攜帶物品",
            "text",
            aliases=("攜帶物品", "應攜帶", "bring_notes", "bring"),
        ),
        FieldSpec(
            "status", "預約狀態", "appointment_status", aliases=("預約狀態", "狀態", "status")
        ),
    ),
)

KINDS: dict[str, KindSpec] = {
    spec.kind: spec for spec in (PATIENTS, VISITS, PRESCRIPTIONS, PROCEDURES, APPOINTMENTS)
}
