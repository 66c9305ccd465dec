"""Synthetic patients for demos and benchmarks: `manage.py seed_demo --patients 500 --seed 1`.

Everything is dated relative to today, so birthdays, appointments, post-op follow-ups and refill
windows are always due somewhere. The first patients of every run cover each of those cases, so
even a small demo shows all of them; the rest are drawn at random. Then today and tomorrow are
filled in for the front desk's day view: 20-40 appointments each, in every state, with their
reminders sent, delivered, failed, waiting or not sent for a reason.

Names are made up, e-mail addresses use the reserved example.* domains and national IDs carry a
wrong check digit, so no address or ID can be anyone's. Mobile numbers are random 09xx numbers,
and some of those will be real people's: never run the reminder worker against a real SMS
account on a seeded database.
"""

import itertools
import random
import time as clock
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import reset_queries, transaction
from django.db.models import Exists, OuterRef
from django.db.models.functions import Length
from django.utils import timezone

# The demo command writes across apps (the reminders of the demo day); patients' own code
# never imports campaigns or reminders.
from campaigns.models import Rule, RuleKind, Skip, SkipReason
from campaigns.policy import channel_order_for, is_held_out
from campaigns.sendwindow import LONGEST_CLOSURE_DAYS, at_local, day_bounds, is_open_day
from campaigns.templating import sms_size
from consent.models import Action, Channel, ConsentEntry, ConsentState, Purpose, Source
from consent.services import consent_bulk_record
from patients.management.demo_history import (
    FAILURES,
    HISTORY_DAYS,
    Collected,
    HistoryContext,
    PatientHistory,
    created_at_as_given,
    demo_channel,
    rule_history_setup,
)
from patients.models import (
    DEFAULT_DOSE_TIMES,
    Appointment,
    ClinicProfile,
    Condition,
    ContactChannel,
    Language,
    Patient,
    Prescription,
    Procedure,
    RefillWindow,
    Visit,
)
from reminders.models import Attempt, OutboxMessage, TrackedLink
from reminders.models import Status as MessageStatus

# Patients generated and written per round: bounds memory whatever --patients is.
CHUNK = 2000
# Rows per INSERT statement.
BATCH = 2000
CHART_PREFIX = "D"

# Surname, romanisation, weight (roughly their share of Taiwan's population, in per mille).
SURNAMES = [
    ("陳", "Chen", 112), ("林", "Lin", 83), ("黃", "Huang", 60), ("張", "Chang", 53),
    ("李", "Lee", 51), ("王", "Wang", 41), ("吳", "Wu", 40), ("劉", "Liu", 32),
    ("蔡", "Tsai", 29), ("楊", "Yang", 26), ("許", "Hsu", 23), ("鄭", "Cheng", 19),
    ("謝", "Hsieh", 18), ("郭", "Kuo", 17), ("洪", "Hung", 16), ("曾", "Tseng", 15),
    ("邱", "Chiu", 15), ("廖", "Liao", 15), ("賴", "Lai", 14), ("周", "Chou", 14),
    ("徐", "Hsu", 13), ("蘇", "Su", 13), ("葉", "Yeh", 13), ("莊", "Chuang", 12),
    ("呂", "Lu", 12), ("江", "Chiang", 11), ("何", "Ho", 11), ("蕭", "Hsiao", 11),
    ("羅", "Lo", 11), ("高", "Kao", 10), ("潘", "Pan", 9), ("簡", "Chien", 8),
    ("朱", "Chu", 8), ("鍾", "Chung", 8), ("彭", "Peng", 7), ("游", "Yu", 7),
]  # fmt: skip
SURNAME_WEIGHTS = list(itertools.accumulate(weight for _s, _r, weight in SURNAMES))

# Given-name characters with romanisation, by sex and by generation (born before 1970 or not).
GIVEN = {
    ("F", True): "秀hsiu 美mei 玉yu 麗li 淑shu 月yueh 英ying 珠chu 琴chin 華hua 蘭lan 芬fen "
    "惠hui 珍chen 雪hsueh 春chun 枝chih 鳳feng 梅mei 金chin",
    ("F", False): "婷ting 涵han 妤yu 欣hsin 怡yi 琪chi 雅ya 佳chia 筱hsiao 庭ting 瑄hsuan 萱hsuan "
    "芸yun 潔chieh 宜yi 彤tung 恩en 晴ching 慧hui 君chun",
    ("M", True): "金chin 明ming 雄hsiung 國kuo 榮jung 德te 清ching 文wen 志chih 正cheng 忠chung "
    "義yi 福fu 財tsai 輝hui 振chen 坤kun 山shan 進chin 源yuan",
    ("M", False): "宇yu 翔hsiang 傑chieh 豪hao 承cheng 恩en 柏po 睿jui 宥yu 廷ting 凱kai 哲che "
    "翰han 軒hsuan 瑋wei 家chia 冠kuan 昱yu 俊chun 宏hung",
}
GIVEN_CHARS = {key: [(item[0], item[1:]) for item in chars.split()] for key, chars in GIVEN.items()}
# Migrant spouses, workers and expatriates, who mostly read English better than Chinese.
FOREIGN_NAMES = [
    ("Nguyen Thi Lan", "F"), ("Tran Van Minh", "M"), ("Pham Thu Ha", "F"),
    ("Maria Santos", "F"), ("Juan Dela Cruz", "M"), ("Siti Rahayu", "F"),
    ("Budi Santoso", "M"), ("Somchai Wongsakul", "M"), ("John Miller", "M"),
    ("Emily Carter", "F"), ("David Kim", "M"), ("Anna Schmidt", "F"),
]  # fmt: skip
CAREGIVER_OF_ELDER = ["女兒", "兒子", "媳婦", "配偶", "外籍看護"]
CAREGIVER_OF_CHILD = ["母親", "父親", "祖母"]
PATIENT_NOTES = [
    "聽力不佳，請以簡訊或 LINE 聯絡",
    "行動不便，需家屬陪同",
    "對 Penicillin 過敏",
    "白天上班，請於晚上聯絡",
    "需輪椅協助",
    "偏好台語溝通",
]

# Condition code -> (ICD-10 code, chronic drug, dose, frequency).
CHRONIC = {
    "hypertension": ("I10", "Amlodipine 5mg", "1 tab", "QD"),
    "diabetes": ("E11.9", "Metformin 500mg", "1 tab", "BID"),
    "hyperlipidemia": ("E78.5", "Atorvastatin 20mg", "1 tab", "HS"),
    "ckd": ("N18.3", "Sodium bicarbonate 650mg", "1 tab", "TID"),
    "heart-disease": ("I25.10", "Aspirin 100mg", "1 tab", "QD"),
    "asthma": ("J45.909", "Montelukast 10mg", "1 tab", "HS"),
    "copd": ("J44.9", "Tiotropium 2.5mcg inhaler", "2 puffs", "QD"),
    "gout": ("M10.9", "Allopurinol 100mg", "1 tab", "QD"),
}
# How common each condition is among patients with any (hypertension leads by far).
CONDITION_WEIGHTS = {
    "hypertension": 40,
    "diabetes": 22,
    "hyperlipidemia": 25,
    "ckd": 6,
    "heart-disease": 8,
    "asthma": 6,
    "copd": 4,
    "gout": 7,
}
DEPARTMENTS = {
    # department: (doctors, diagnosis codes, acute drugs as (drug, dose, frequency, days))
    "家醫科": (
        ["王醫師", "林醫師"],
        ["J06.9", "Z00.00", "K21.9", "R51"],
        [
            ("Acetaminophen 500mg", "1 tab", "PRN", 3),
            ("Famotidine 20mg", "1 tab", "BID", 7),
            ("Cetirizine 10mg", "1 tab", "HS", 5),
        ],
    ),
    "內科": (
        ["陳醫師", "張醫師"],
        ["K21.9", "K29.70", "J20.9", "R10.9"],
        [
            ("Esomeprazole 40mg", "1 tab", "QD", 7),
            ("Acetylcysteine 600mg", "1 pack", "TID", 5),
            ("Mosapride 5mg", "1 tab", "TID", 7),
        ],
    ),
    "骨科": (
        ["李醫師"],
        ["M54.5", "M17.11", "S93.401A", "M25.511"],
        [
            ("Celecoxib 200mg", "1 cap", "BID", 7),
            ("Ibuprofen 400mg", "1 tab", "TID", 5),
        ],
    ),
    "眼科": (
        ["黃醫師"],
        ["H25.9", "H52.13", "H10.9", "H40.9"],
        [("Fluorometholone 0.1% eye drops", "1 drop", "QID", 7)],
    ),
    "皮膚科": (
        ["吳醫師"],
        ["L20.9", "L30.9", "B35.1", "L70.0"],
        [
            ("Hydrocortisone 1% cream", "thin layer", "BID", 7),
            ("Levocetirizine 5mg", "1 tab", "HS", 7),
        ],
    ),
    "耳鼻喉科": (
        ["劉醫師"],
        ["J30.9", "J02.9", "H66.90", "J01.90"],
        [
            ("Amoxicillin 500mg", "1 cap", "TID", 7),
            ("Fexofenadine 60mg", "1 tab", "BID", 5),
        ],
    ),
}
DEPARTMENT_NAMES = list(DEPARTMENTS)
CHRONIC_DEPARTMENTS = ["家醫科", "內科"]
VISIT_NOTES = [
    "血壓控制穩定，持續用藥",
    "建議低鹽低油飲食",
    "三個月後抽血追蹤",
    "症狀改善中",
    "衛教規則用藥",
    "轉介營養師",
]
LOCATIONS = ["一樓 1 診", "一樓 2 診", "二樓 3 診", "二樓 5 診"]
BRING_NOTES = ["", "", "健保卡", "健保卡、檢驗報告", "空腹抽血（前一晚十點後禁食）", "藥袋"]
# Procedure: (name, care plan, department, lowest age, hours from procedure to discharge).
PROCEDURES = [
    ("白內障手術", "cataract", "眼科", 55, (2, 3)),
    ("大腸鏡息肉切除", "colonoscopy", "內科", 40, (2, 4)),
    ("拔牙", "dental-extraction", "家醫科", 12, (1, 1)),
]
PROCEDURE_DIAGNOSES = {"cataract": "H25.9", "colonoscopy": "K63.5", "dental-extraction": "K08.89"}
PROCEDURE_BY_KEY = {
    key: (name, key, dept, age, hours) for name, key, dept, age, hours in PROCEDURES
}
# Clinic sessions (start, end) in minutes after midnight: morning, afternoon, evening.
SESSIONS = [(8 * 60 + 30, 11 * 60 + 45), (14 * 60, 17 * 60), (18 * 60, 20 * 60 + 45)]
# Letter codes of Taiwan's ID numbers, for the check digit.
ID_LETTER_CODES = dict(zip("ABCDEFGHJKLMNPQRSTUVXYWZIO", range(10, 36), strict=True))
CHECK_WEIGHTS = (1, 9, 8, 7, 6, 5, 4, 3, 2, 1)

# The first patients of every run, so that each due case is there even in a tiny demo.
SHOWCASE: list[dict] = [
    {"contact": "phone+line", "appointment_in": 1},
    {"contact": "phone", "appointment_in": 7},
    {"contact": "phone", "birthday_in": 0, "consent": "all"},
    {"contact": "phone+line", "discharged": (0, "cataract")},
    {"contact": "phone", "discharged": (1, "colonoscopy")},
    {"contact": "phone", "discharged": (3, "dental-extraction")},
    {"contact": "phone+line", "discharged": (7, "cataract")},
    {"contact": "phone", "refill_opens_today": "hypertension"},
    {"contact": "email"},
    {"contact": "none"},
    {"contact": "phone", "feb29": True},
    {"contact": "phone", "consent": "all", "withdrawn": True},
]


@dataclass
class DemoPatient:
    """One synthetic patient and everything on record about them, not yet saved."""

    patient: Patient
    condition_codes: list[str] = field(default_factory=list)
    visits: list[Visit] = field(default_factory=list)
    prescriptions: list[Prescription] = field(default_factory=list)
    refill_windows: list[RefillWindow] = field(default_factory=list)
    procedures: list[Procedure] = field(default_factory=list)
    appointments: list[Appointment] = field(default_factory=list)
    consent_entries: list[ConsentEntry] = field(default_factory=list)


def chart_number(number: int) -> str:
    return f"{CHART_PREFIX}{number:06d}"


def demo_patients(
    *, seed: int, count: int, today: date, first_number: int = 1, tz: tzinfo | None = None
) -> Iterator[DemoPatient]:
    """Yield `count` synthetic patients, the same ones for the same arguments; no queries."""
    generator = _Generator(
        rng=random.Random(seed), today=today, tz=tz or timezone.get_default_timezone()
    )
    for offset in range(count):
        forced = SHOWCASE[offset] if offset < len(SHOWCASE) else {}
        yield generator.patient(number=first_number + offset, forced=forced)


class _Generator:
    def __init__(self, *, rng: random.Random, today: date, tz: tzinfo):
        self.rng = rng
        self.today = today
        self.tz = tz

    def at(self, day: date, minutes: int) -> datetime:
        return datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=self.tz)

    def patient(self, *, number: int, forced: dict) -> DemoPatient:
        rng = self.rng
        sex = rng.choices("FMOU", weights=(52, 46, 0.5, 1.5))[0]
        birth_date = self.birth_date(forced)
        age = _age(birth_date, self.today) if birth_date else 50
        english = rng.random() < 0.07
        if english and rng.random() < 0.6:
            name, foreign_sex = rng.choice(FOREIGN_NAMES)
            sex = foreign_sex
            roman = name.lower().replace(" ", ".")
        else:
            name, roman = self.chinese_name(sex=sex, born=birth_date.year if birth_date else 1970)

        contact = (
            forced.get("contact")
            or rng.choices(["none", "email", "line", "phone"], weights=(3, 5, 2, 90))[0]
        )
        if contact == "phone":
            contact = "phone" + ("+line" if rng.random() < 0.4 else "")
            contact += "+email" if rng.random() < 0.25 else ""
        phone = self.mobile() if "phone" in contact else ""
        line_user_id = f"U{rng.getrandbits(128):032x}" if "line" in contact else ""
        email = ""
        if "email" in contact:
            domain = rng.choice(("com", "net", "org"))
            email = f"{roman}{rng.randrange(1, 100)}@example.{domain}"
        channels = [
            channel
            for channel, address in (
                (ContactChannel.LINE, line_user_id),
                (ContactChannel.SMS, phone),
                (ContactChannel.EMAIL, email),
            )
            if address
        ]
        preferred = ""
        if channels and rng.random() < 0.9:
            preferred = channels[0] if rng.random() < 0.7 else rng.choice(channels)

        caregiver = ""
        if (
            (age >= 75 and rng.random() < 0.4)
            or (age < 12 and rng.random() < 0.6)
            or (rng.random() < 0.02)
        ):
            relation = rng.choice(CAREGIVER_OF_CHILD if age < 12 else CAREGIVER_OF_ELDER)
            carer, _roman = self.chinese_name(sex=rng.choice("FM"), born=1975)
            digits = self.mobile()[4:]
            caregiver = f"{carer}（{relation}）0{digits[:3]}-{digits[3:6]}-{digits[6:]}"

        patient = Patient(
            chart_no=chart_number(number),
            name=name,
            sex=sex,
            birth_date=birth_date,
            phone=phone,
            email=email,
            line_user_id=line_user_id,
            national_id=self.national_id(number=number, sex=sex) if rng.random() < 0.04 else "",
            preferred_language=Language.EN if english else Language.ZH_HANT,
            preferred_channel=preferred,
            caregiver_contact=caregiver,
            notes=rng.choice(PATIENT_NOTES) if rng.random() < 0.05 else "",
        )
        demo = DemoPatient(patient=patient)
        demo.condition_codes = self.conditions(age=age, forced=forced)
        self.add_visits(demo, forced=forced)
        self.add_procedure(demo, age=age, forced=forced)
        self.add_appointments(demo, forced=forced)
        self.add_consent(demo, channels=channels, forced=forced)
        return demo

    def chinese_name(self, *, sex: str, born: int) -> tuple[str, str]:
        rng = self.rng
        surname, surname_roman, _weight = rng.choices(SURNAMES, cum_weights=SURNAME_WEIGHTS)[0]
        older = (born < 1970) != (rng.random() < 0.2)
        chars = GIVEN_CHARS[(sex if sex in "FM" else rng.choice("FM"), older)]
        given = rng.sample(chars, 1 if rng.random() < 0.05 else 2)
        name = surname + "".join(char for char, _roman in given)
        roman = "".join(roman for _char, roman in given) + "." + surname_roman.lower()
        return name, roman

    def birth_date(self, forced: dict) -> date | None:
        rng = self.rng
        if "birthday_in" in forced or "feb29" in forced:
            day = self.today + timedelta(days=forced.get("birthday_in", 0))
            month_day = (2, 29) if forced.get("feb29") else (day.month, day.day)
            return _birthday(month_day, year=rng.randint(1935, 2020))
        roll = rng.random()
        if roll < 0.02:
            return None
        year = min(int(rng.triangular(1935, 2021, 1962)), 2020)
        if roll < 0.03:
            return _birthday((2, 29), year=year)
        if roll < 0.05:
            day = self.today + timedelta(days=rng.randrange(0, 8))
            return _birthday((day.month, day.day), year=year)
        return date(year, 1, 1) + timedelta(days=rng.randrange(365))

    def mobile(self) -> str:
        return f"+8869{self.rng.randrange(100_000_000):08d}"

    def national_id(self, *, number: int, sex: str) -> str:
        rng = self.rng
        letter = rng.choice(list(ID_LETTER_CODES))
        sex_digit = {"M": "1", "F": "2"}.get(sex) or rng.choice("12")
        # An invertible scramble of the chart number: unique per patient, not sequential.
        serial = (number * 7_654_321 + 1_234_567) % 10_000_000
        body = f"{sex_digit}{serial:07d}"
        code = ID_LETTER_CODES[letter]
        digits = [code // 10, code % 10, *(int(d) for d in body)]
        correct = -sum(w * d for w, d in zip(CHECK_WEIGHTS, digits, strict=True)) % 10
        # A valid check digit: the model refuses any other, as it would from the front desk.
        return f"{letter}{body}{correct}"

    def conditions(self, *, age: int, forced: dict) -> list[str]:
        rng = self.rng
        if "refill_opens_today" in forced:
            return [forced["refill_opens_today"]]
        if rng.random() >= (0.4 if age >= 40 else 0.08):
            return []
        if age < 40:
            return ["asthma"]
        how_many = rng.choices((1, 2, 3), weights=(60, 30, 10))[0]
        codes = list(CONDITION_WEIGHTS)
        picked: list[str] = []
        while len(picked) < how_many:
            code = rng.choices(codes, weights=list(CONDITION_WEIGHTS.values()))[0]
            if code not in picked:
                picked.append(code)
        return picked

    def add_visits(self, demo: DemoPatient, *, forced: dict) -> None:
        rng = self.rng
        chronic = demo.condition_codes
        born = demo.patient.birth_date
        if chronic:
            count = rng.randint(2, 5)
            ago = 18 if "refill_opens_today" in forced else rng.randint(1, 100)
            if not forced and rng.random() < 0.15:
                ago += 100  # lapsed: the recall rule's patients, now and in the demo's past
        else:
            count = rng.choices(range(6), weights=(15, 30, 25, 15, 10, 5))[0]
            ago = rng.randint(1, 730)
        day = self.today - timedelta(days=ago)
        for index in range(count):
            if born and day < born:
                break
            if chronic:
                showcase = index == 0 and "refill_opens_today" in forced
                self.add_chronic_visit(demo, day=day, showcase=showcase)
            else:
                self.add_acute_visit(demo, day=day)
            day -= timedelta(days=rng.randint(20, 120))

    def add_chronic_visit(self, demo: DemoPatient, *, day: date, showcase: bool) -> None:
        rng = self.rng
        department = rng.choice(CHRONIC_DEPARTMENTS)
        visit = self.visit(demo, day=day, department=department)
        visit.diagnosis_codes = ", ".join(CHRONIC[code][0] for code in demo.condition_codes)
        # Started 18 days ago with 28 days' supply, the first refill window opens today.
        days_supplied = 28 if showcase else rng.choice((28, 30))
        for code in demo.condition_codes:
            _icd, drug, dose, frequency = CHRONIC[code]
            refills = rng.randint(1, 3) if showcase or rng.random() < 0.75 else 0
            self.prescription(
                demo,
                visit=visit,
                drug=drug,
                dose=dose,
                frequency=frequency,
                days_supplied=days_supplied,
                refills=refills,
            )

    def add_acute_visit(self, demo: DemoPatient, *, day: date) -> None:
        rng = self.rng
        department = rng.choice(DEPARTMENT_NAMES)
        _doctors, codes, drugs = DEPARTMENTS[department]
        visit = self.visit(demo, day=day, department=department)
        visit.diagnosis_codes = rng.choice(codes)
        for drug, dose, frequency, days in rng.sample(drugs, min(len(drugs), rng.randint(0, 2))):
            self.prescription(
                demo,
                visit=visit,
                drug=drug,
                dose=dose,
                frequency=frequency,
                days_supplied=days,
                refills=0,
            )

    def visit(self, demo: DemoPatient, *, day: date, department: str) -> Visit:
        rng = self.rng
        visit = Visit(
            patient=demo.patient,
            visited_on=day,
            department=department,
            doctor=rng.choice(DEPARTMENTS[department][0]),
            note=rng.choice(VISIT_NOTES) if rng.random() < 0.25 else "",
        )
        demo.visits.append(visit)
        return visit

    def prescription(self, demo: DemoPatient, *, visit: Visit, refills: int, **fields) -> None:
        rng = self.rng
        prescription = Prescription(
            patient=demo.patient,
            visit=visit,
            start_date=visit.visited_on,
            dose_times=list(DEFAULT_DOSE_TIMES[fields["frequency"]]),
            refills=refills,
            dose_reminders=fields["frequency"] != "PRN" and rng.random() < 0.04,
            refill_reminders=rng.random() < 0.9,
            **fields,
        )
        demo.prescriptions.append(prescription)
        for number, opens, closes in prescription.refill_windows_due():
            picked_up = None
            if closes < self.today and rng.random() < 0.85:
                picked_up = opens + timedelta(days=rng.randrange((closes - opens).days + 1))
            elif opens <= self.today <= closes and rng.random() < 0.2:
                picked_up = opens + timedelta(days=rng.randrange((self.today - opens).days + 1))
            demo.refill_windows.append(
                RefillWindow(
                    prescription=prescription,
                    number=number,
                    opens_on=opens,
                    closes_on=closes,
                    picked_up_on=picked_up,
                )
            )

    def add_procedure(self, demo: DemoPatient, *, age: int, forced: dict) -> None:
        rng = self.rng
        if "discharged" in forced:
            ago, key = forced["discharged"]
            name, key, department, _min_age, hours = PROCEDURE_BY_KEY[key]
        else:
            if rng.random() >= 0.06:
                return
            fitting = [p for p in PROCEDURES if age >= p[3]]
            if not fitting:
                return
            name, key, department, _min_age, hours = rng.choice(fitting)
            ago = rng.choices((0, 1, 3, 7, -1), weights=(8, 8, 8, 8, 68))[0]
            if ago < 0:
                ago = rng.randint(1, 540)
        day = self.today - timedelta(days=ago)
        # Day surgery in the morning, home a few hours later: run before noon, and today's
        # discharges still lie a little ahead, as they would at the clinic.
        performed_at = self.at(day, rng.randrange(8 * 60, 10 * 60 + 30, 15))
        discharged_at = performed_at + timedelta(minutes=rng.randint(hours[0] * 60, hours[1] * 60))
        demo.procedures.append(
            Procedure(
                patient=demo.patient,
                procedure_type=name,
                performed_at=performed_at,
                discharged_at=discharged_at,
                care_plan_key=key,
            )
        )
        visit = self.visit(demo, day=day, department=department)
        visit.diagnosis_codes = PROCEDURE_DIAGNOSES[key]

    def add_appointments(self, demo: DemoPatient, *, forced: dict) -> None:
        rng = self.rng
        usual = demo.visits[0].department if demo.visits else rng.choice(DEPARTMENT_NAMES)
        for _past in range(rng.choices((0, 1, 2), weights=(50, 35, 15))[0]):
            status = rng.choices(
                (
                    Appointment.Status.ATTENDED,
                    Appointment.Status.CANCELLED,
                    Appointment.Status.NO_SHOW,
                ),
                weights=(78, 12, 10),
            )[0]
            self.appointment(demo, day_offset=-rng.randint(1, 365), department=usual, status=status)
        if "appointment_in" in forced:
            ahead = forced["appointment_in"]
        elif rng.random() < (0.7 if demo.condition_codes else 0.35):
            ahead = rng.choices((1, 7, -1), weights=(15, 15, 70))[0]
            if ahead < 0:
                ahead = rng.randint(2, 60)
        else:
            return
        status = (
            Appointment.Status.BOOKED
            if forced
            else rng.choices(
                (
                    Appointment.Status.BOOKED,
                    Appointment.Status.CONFIRMED,
                    Appointment.Status.CANCELLED,
                ),
                weights=(80, 12, 8),
            )[0]
        )
        self.appointment(demo, day_offset=ahead, department=usual, status=status)

    def appointment(self, demo: DemoPatient, *, day_offset: int, department: str, status: str):
        rng = self.rng
        start, end = rng.choice(SESSIONS)
        demo.appointments.append(
            Appointment(
                patient=demo.patient,
                starts_at=self.at(
                    self.today + timedelta(days=day_offset), rng.randrange(start, end, 15)
                ),
                department=department,
                doctor=rng.choice(DEPARTMENTS[department][0]),
                location=rng.choice(LOCATIONS),
                bring_notes=rng.choice(BRING_NOTES),
                status=status,
            )
        )

    def add_consent(self, demo: DemoPatient, *, channels: Sequence[str], forced: dict) -> None:
        rng = self.rng
        if not forced and rng.random() < 0.08:
            return  # never asked: the form wasn't filled in
        # Consent is given at the first visit, and always on an earlier day than today, so no
        # ledger entry lies in the future whenever the command runs.
        first_seen = min((v.visited_on for v in demo.visits), default=None)
        if first_seen is None or first_seen > self.today - timedelta(days=2):
            first_seen = self.today - timedelta(days=rng.randint(30, 900))
        # A grant on a channel the clinic has no address for does happen (a LINE consent ticked
        # before the patient ever added the account) and must not lead to a send.
        unreachable = [channel for channel in Channel.values if channel not in channels]
        if channels and unreachable and rng.random() < 0.03:
            channels = [*channels, rng.choice(unreachable)]
        if not channels and rng.random() < 0.5:
            channels = [Channel.SMS]
        for channel in channels:
            for purpose, chance in ((Purpose.CARE, 0.8), (Purpose.RELATIONSHIP, 0.45)):
                if forced and (purpose == Purpose.CARE or forced.get("consent") == "all"):
                    chance = 1.0
                if rng.random() >= chance:
                    if rng.random() < 0.05:
                        self.consent(demo, purpose, channel, first_seen, refused=True)
                    continue
                self.consent(demo, purpose, channel, first_seen)
                if (forced.get("withdrawn") and channel == Channel.SMS) or (
                    not forced and rng.random() < 0.07
                ):
                    later = first_seen + timedelta(
                        days=rng.randint(1, (self.today - first_seen).days - 1)
                    )
                    self.consent(demo, purpose, channel, later, withdrawn=True)

    def consent(
        self,
        demo: DemoPatient,
        purpose: str,
        channel: str,
        day: date,
        *,
        refused: bool = False,
        withdrawn: bool = False,
    ) -> None:
        rng = self.rng
        action = Action.WITHDRAW if refused or withdrawn else Action.GRANT
        if refused:
            source, evidence = Source.PAPER_FORM, "初診同意書勾選不同意"
        elif withdrawn:
            withdrawals: dict[str, tuple[Source, str]] = {
                Channel.SMS: (Source.SMS_KEYWORD, "回覆 STOP"),
                Channel.LINE: (Source.LINE_FOLLOW, "封鎖 LINE 官方帳號"),
                Channel.EMAIL: (Source.PATIENT_REQUEST, "來電要求停止寄送"),
            }
            source, evidence = withdrawals[channel]
        elif channel == Channel.LINE and rng.random() < 0.5:
            source, evidence = Source.LINE_FOLLOW, "加入 LINE 官方帳號"
        elif rng.random() < 0.65:
            source, evidence = Source.PAPER_FORM, "初診同意書 v2"
        else:
            source, evidence = Source.FRONT_DESK, "櫃台口頭同意"
        demo.consent_entries.append(
            ConsentEntry(
                patient=demo.patient,
                purpose=purpose,
                channel=channel,
                action=action,
                source=source,
                evidence=evidence,
                recorded_at=self.at(day, rng.randrange(9 * 60, 17 * 60 + 30)),
            )
        )


def _age(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _birthday(month_day: tuple[int, int], *, year: int) -> date:
    """A birth date on `month_day` in or near `year`; Feb 29 moves to the nearest leap year."""
    month, day = month_day
    if (month, day) == (2, 29):
        year -= year % 4
        if year % 100 == 0 and year % 400:
            year -= 4
    return date(year, month, day)


def _chunks(items: Iterable[DemoPatient], size: int) -> Iterator[list[DemoPatient]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def next_chart_number() -> int:
    """One past the highest demo chart number on file, so a second run adds, never collides."""
    last = (
        Patient.objects.filter(chart_no__regex=rf"^{CHART_PREFIX}[0-9]+$")
        .annotate(width=Length("chart_no"))
        .order_by("-width", "-chart_no")
        .values_list("chart_no", flat=True)
        .first()
    )
    return int(last[len(CHART_PREFIX) :]) + 1 if last else 1


@transaction.atomic
def _demo_clinic() -> None:
    """A made-up clinic for the messages to sign with, unless one was already set up."""
    profile = ClinicProfile.load()
    if not profile.name:
        profile.name = "安心家醫診所"
        profile.phone = "02-2345-6789"
        profile.address = "台北市中正區示範路 1 號"
        profile.line_account_name = "@anxin-demo"
        profile.save()


def demo_seed(*, seed: int, count: int, now: datetime) -> Counter:
    """Write `count` synthetic patients, their records and what the care rules did for them
    over the last HISTORY_DAYS days; returns rows written per kind."""
    today = timezone.localdate(now)
    condition_ids = dict(Condition.objects.values_list("code", "id"))
    _demo_clinic()
    rule_history_setup(now=now)
    history = HistoryContext.load(seed=seed, now=now, new_appointment=_new_appointment)
    first_number = next_chart_number()
    counts: Counter = Counter(first=first_number, last=first_number + count - 1)
    patients = demo_patients(seed=seed, count=count, today=today, first_number=first_number)
    for chunk in _chunks(patients, CHUNK):
        _write(chunk, condition_ids=condition_ids, counts=counts, history=history)
        # With DEBUG on, Django keeps the text of the last 9000 queries: at megabytes per bulk
        # INSERT that alone would hold gigabytes.
        reset_queries()
    return counts


# The front desk's demo day: how many appointments today and tomorrow, and in what states.
DAY_APPOINTMENTS = (20, 40)
# Reminder outcomes of the demo day, with weights, for patients the clinic may remind (the
# others get a Skip row with the reason); "none": not planned yet.
REMINDER_OUTCOMES = {
    MessageStatus.DELIVERED: 40,
    MessageStatus.SENT: 14,
    MessageStatus.FAILED: 10,
    MessageStatus.UNKNOWN: 4,
    MessageStatus.DROPPED: 4,
    "none": 10,
}
# The first reminders of each demo day, one of each state the day view shows.
DAY_SHOWS_EVERY_STATE = [
    MessageStatus.FAILED,
    MessageStatus.DELIVERED,
    MessageStatus.SENT,
    MessageStatus.UNKNOWN,
    MessageStatus.DROPPED,
]
REPLY = Appointment.ConfirmedVia.REPLY
CONFIRMED_BY_ANSWER = (REPLY, Appointment.ConfirmedVia.LINE)
# The one attempt of each demo-day reminder that reached a provider.
DAY_ATTEMPT_OUTCOMES: dict[str, str] = {
    MessageStatus.SENT: Attempt.Outcome.SENT,
    MessageStatus.DELIVERED: Attempt.Outcome.SENT,
    MessageStatus.UNKNOWN: Attempt.Outcome.UNKNOWN,
    MessageStatus.FAILED: Attempt.Outcome.PERMANENT,
}
CONFIRMED_VIA_WEIGHTS = {
    Appointment.ConfirmedVia.REPLY: 45,
    Appointment.ConfirmedVia.LINE: 25,
    Appointment.ConfirmedVia.PHONE: 20,
    Appointment.ConfirmedVia.DESK: 10,
}


def demo_days(*, seed: int, today: date, first: int, last: int, now: datetime) -> Counter:
    """Fill today and tomorrow for the day view: top each day up to 20-40 appointments with
    patients of chart numbers `first`..`last`, spread them over every status, and give each
    its confirmation and reminders. Same seed and same database, same result; a few queries
    per day, whatever the number of patients."""
    # The first chart number too: a second run on the same day makes other messages (uuids).
    rng = random.Random(f"demo-day:{seed}:{today.isoformat()}:{first}")
    counts: Counter = Counter()
    rules = {
        rule.asks_confirmation: rule for rule in Rule.objects.filter(kind=RuleKind.APPOINTMENT)
    }
    rule = rules.get(True) or rules.get(False)
    # The week-ahead notices of the past already name these days' visits: what marks a visit
    # as done by an earlier run is its confirmation request.
    answered = Exists(OutboxMessage.objects.filter(appointment_id=OuterRef("pk"), rule=rule))
    for offset in (0, 1):
        day = today + timedelta(days=offset)
        start, end = day_bounds(day)
        on_day = Appointment.objects.filter(starts_at__gte=start, starts_at__lt=end)
        target = rng.randint(*DAY_APPOINTMENTS)
        wanted = min(target - on_day.count(), last - first + 1)
        if wanted > 0:
            counts["day_appointments"] += _demo_day_appointments(rng, day, first, last, wanted)
        # At 100,000 patients the generator alone books thousands for tomorrow: only the first
        # ones by time get the demo's statuses and reminders.
        ids = list(
            on_day.filter(~answered, patient__erased_at__isnull=True)
            .order_by("starts_at", "id")
            .values_list("id", flat=True)[: DAY_APPOINTMENTS[1]]
        )
        appointments = list(
            Appointment.objects.filter(pk__in=ids)
            .select_related("patient")
            .order_by("starts_at", "id")
        )
        counts.update(_demo_day_states(rng, appointments, rule, today=day == today, now=now))
    return counts


def _demo_day_appointments(rng: random.Random, day: date, first: int, last: int, n: int) -> int:
    numbers = rng.sample(range(first, last + 1), n)
    patients = dict(
        Patient.objects.filter(chart_no__in=[chart_number(x) for x in numbers]).values_list(
            "chart_no", "pk"
        )
    )
    rows = []
    tz = timezone.get_default_timezone()
    for number in numbers:
        if chart_number(number) not in patients:
            continue
        department = rng.choice(DEPARTMENT_NAMES)
        session_start, session_end = rng.choice(SESSIONS)
        minutes = rng.randrange(session_start, session_end, 15)
        rows.append(
            Appointment(
                patient_id=patients[chart_number(number)],
                starts_at=datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=tz),
                department=department,
                doctor=rng.choice(DEPARTMENTS[department][0]),
                location=rng.choice(LOCATIONS),
                bring_notes=rng.choice(BRING_NOTES),
            )
        )
    Appointment.objects.bulk_create(rows)
    return len(rows)


def _demo_day_states(
    rng: random.Random,
    appointments: list[Appointment],
    rule: Rule | None,
    *,
    today: bool,
    now: datetime,
) -> Counter:
    counts: Counter = Counter()
    messages, skips = [], []
    profile = ClinicProfile.load()
    shown: list[str] = list(DAY_SHOWS_EVERY_STATE)
    # Consent as it stands: the day's requests went out in the last day or so.
    granted: dict[tuple[int, str], bool] = {}
    if rule is not None:
        rows = ConsentState.objects.filter(
            patient_id__in={a.patient_id for a in appointments}, purpose=rule.purpose
        ).values_list("patient_id", "channel", "granted")
        granted = {(patient_id, channel): ok for patient_id, channel, ok in rows}
    for index, appointment in enumerate(appointments):
        early = index < len(appointments) * 0.4
        if today and early:
            # The morning so far: most came, some didn't, a few are still to be marked.
            statuses = {"attended": 70, "no_show": 15, "booked": 10, "cancelled": 5}
        else:
            statuses = {"booked": 45, "confirmed": 45, "cancelled": 10}
        status = rng.choices(list(statuses), weights=list(statuses.values()))[0]
        appointment.status = status
        if status in ("confirmed", "attended") and rng.random() < 0.8:
            via = rng.choices(list(CONFIRMED_VIA_WEIGHTS), list(CONFIRMED_VIA_WEIGHTS.values()))
            appointment.confirmed_via = via[0]
            appointment.confirmed_at = now - timedelta(hours=rng.randint(2, 30))
        outcome = rng.choices(list(REMINDER_OUTCOMES), list(REMINDER_OUTCOMES.values()))[0]
        if appointment.confirmed_via == REPLY:
            outcome = MessageStatus.DELIVERED  # a reply answers a message that arrived
        if rule is None or outcome == "none":
            continue
        key = f"appointment:{appointment.pk}:{appointment.starts_at.astimezone(UTC).isoformat()}"
        sent_at = _sending_time_before(now - timedelta(hours=rng.randint(3, 26)), profile)
        patient = appointment.patient
        addresses: dict[str, str] = {
            Channel.SMS: patient.phone,
            Channel.LINE: patient.line_user_id,
            Channel.EMAIL: patient.email,
        }
        channel, reason = demo_channel(
            channel_order_for(rule, patient.preferred_channel),
            {channel: granted.get((patient.pk, channel)) for channel in rule.channel_order},
            addresses,
        )
        held_out = is_held_out(rule, appointment.patient_id)
        if reason is None and not held_out and shown and appointment.confirmed_via != REPLY:
            outcome = shown.pop(0)  # every state on the page, whoever is held out
        reminder = _demo_reminder(rng, appointment, rule, key, outcome, sent_at, channel)
        # Decided after every draw, so that who is held out (a hash of the patient's id)
        # changes nothing else of the day. Held out last, as the planner does.
        if reason is None and held_out:
            reason = SkipReason.HOLDOUT
        if reason is not None:
            if appointment.confirmed_via in CONFIRMED_BY_ANSWER:
                # No request went out to answer: a visit of theirs is confirmed by a call.
                appointment.confirmed_via = Appointment.ConfirmedVia.PHONE
            skips.append(
                Skip(rule=rule, patient=patient, occurrence_key=key, reason=reason, at=sent_at)
            )
            continue
        messages.append(reminder)
    Appointment.objects.bulk_update(appointments, ["status", "confirmed_via", "confirmed_at"])
    # No conflicts to ignore: appointments with a request already were left out above, and
    # the attempts need the messages' ids back.
    OutboxMessage.objects.bulk_create(messages)
    Attempt.objects.bulk_create(
        Attempt(
            message=message,
            channel=message.channel,
            started_at=message.sent_at,
            finished_at=message.sent_at + timedelta(seconds=2),
            outcome=DAY_ATTEMPT_OUTCOMES[message.status],
            error=message.error,
        )
        for message in messages
        if message.sent_at is not None
    )
    Skip.objects.bulk_create(skips, ignore_conflicts=True)  # a second run on the same day
    counts.update(day_reminders=len(messages), day_skips=len(skips))
    return counts


def _demo_reminder(
    rng: random.Random,
    appointment: Appointment,
    rule: Rule,
    key: str,
    outcome: str,
    sent_at: datetime,
    channel: str,
) -> OutboxMessage:
    patient = appointment.patient
    channel = channel or Channel.SMS  # a reminder that is not sent: any channel will do
    starts = timezone.localtime(appointment.starts_at)
    error = ""
    if outcome == MessageStatus.FAILED:
        error = rng.choice(FAILURES[channel])[0]
    elif outcome == MessageStatus.DROPPED:
        error = "病人已於櫃台改約"
    if outcome == MessageStatus.DELIVERED and channel != Channel.SMS:
        outcome = MessageStatus.SENT  # only SMS comes back with a delivery report
    reached = outcome in (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.UNKNOWN)
    body = (
        f"{patient.name}您好，提醒您 {starts:%m/%d %H:%M} {appointment.department}"
        f"（{appointment.doctor}）回診，請回覆 1 確認、2 更改時間。"
    )
    return OutboxMessage(
        uuid=uuid.UUID(int=rng.getrandbits(128), version=4),  # the same seed, the same rows
        rule=rule,
        patient=patient,
        appointment=appointment,
        anchor_at=appointment.starts_at,
        occurrence_key=key,
        purpose=rule.purpose,
        channel=channel,
        status=outcome,
        error=error,
        due_at=sent_at,
        next_attempt_at=sent_at,
        expires_at=appointment.starts_at,
        sent_at=sent_at if reached or outcome == MessageStatus.FAILED else None,
        delivered_at=sent_at + timedelta(seconds=20)
        if outcome == MessageStatus.DELIVERED
        else None,
        attempts=1,
        body=body,
        segments=sms_size(body).segments if channel == Channel.SMS else 1,
        country="TW" if channel == Channel.SMS else "",
    )


def _sending_time_before(moment: datetime, profile: ClinicProfile) -> datetime:
    """`moment` if the clinic sends then, else a few minutes before the end of its last send
    window before it: no demo message went out at night or on a closed day."""
    local = timezone.localtime(moment)
    day = local.date()
    for _day in range(LONGEST_CLOSURE_DAYS + 1):
        if is_open_day(day, profile):
            opens = at_local(day, profile.send_window_start)
            closes = at_local(day, profile.send_window_end)
            if opens <= local < closes:
                return local
            if local >= closes:
                return closes - timedelta(minutes=7)
        day -= timedelta(days=1)
        local = at_local(day, time(23, 59))
    raise ValueError(f"the clinic sent nothing in the {LONGEST_CLOSURE_DAYS} days before {moment}")


def _new_appointment(demo: DemoPatient, day: date, rng: random.Random) -> Appointment:
    """A visit booked later (a recalled patient calling back), in the patient's usual
    department at one of the clinic's sessions."""
    last = max(demo.visits, key=lambda visit: visit.visited_on, default=None)
    department = last.department if last else rng.choice(DEPARTMENT_NAMES)
    session_start, session_end = rng.choice(SESSIONS)
    minutes = rng.randrange(session_start, session_end, 15)
    return Appointment(
        patient=demo.patient,
        starts_at=datetime.combine(
            day, time(minutes // 60, minutes % 60), tzinfo=timezone.get_default_timezone()
        ),
        department=department,
        doctor=rng.choice(DEPARTMENTS[department][0]),
        location=rng.choice(LOCATIONS),
        bring_notes=rng.choice(BRING_NOTES),
    )


def _write(
    chunk: list[DemoPatient],
    *,
    condition_ids: dict[str, int],
    counts: Counter,
    history: HistoryContext,
) -> None:
    patients = [demo.patient for demo in chunk]
    _drop_taken_national_ids(patients)
    Patient.objects.bulk_create(patients, batch_size=BATCH)
    through = Patient.conditions.through
    tags = [
        through(patient_id=demo.patient.pk, condition_id=condition_ids[code])
        for demo in chunk
        for code in demo.condition_codes
        if code in condition_ids
    ]
    through.objects.bulk_create(tags, batch_size=BATCH)
    counts.update(patients=len(patients), condition_tags=len(tags))
    # The past needs the patients' ids (the holdout is a hash of them) and may still change
    # their appointments, refill pickups, visits and consent: between the two writes.
    past = Collected()
    for demo in chunk:
        PatientHistory(history, demo, past).run()
    # Parents before children: each child's foreign key is filled from its saved parent.
    for model, attribute in (
        (Visit, "visits"),
        (Prescription, "prescriptions"),
        (RefillWindow, "refill_windows"),
        (Procedure, "procedures"),
        (Appointment, "appointments"),
    ):
        rows = [row for demo in chunk for row in getattr(demo, attribute)]
        model.objects.bulk_create(rows, batch_size=BATCH)
        counts[attribute] += len(rows)
    past.finish_keys()
    with created_at_as_given():
        OutboxMessage.objects.bulk_create(past.messages, batch_size=BATCH)
    Attempt.objects.bulk_create(past.attempts, batch_size=BATCH)
    TrackedLink.objects.bulk_create(past.links, batch_size=BATCH)
    Skip.objects.bulk_create(past.skips, batch_size=BATCH)
    counts.update(
        history_links=len(past.links),
        history_messages=len(past.messages),
        history_attempts=len(past.attempts),
        history_skips=len(past.skips),
    )
    counts["consent_entries"] += consent_bulk_record(
        entries=[entry for demo in chunk for entry in demo.consent_entries]
    )


def _drop_taken_national_ids(patients: list[Patient]) -> None:
    """Leave out a seeded ID that someone on file already has (the column is unique)."""
    by_digest = {
        Patient.index_of("national_id", p.national_id): p for p in patients if p.national_id
    }
    if not by_digest:
        return
    taken = Patient.objects.filter(national_id_bidx__in=list(by_digest)).values_list(
        "national_id_bidx", flat=True
    )
    for digest in taken:
        by_digest[digest].national_id = ""


class Command(BaseCommand):
    help = "Add synthetic demo patients with visits, prescriptions, appointments and consent."

    def add_arguments(self, parser):
        parser.add_argument("--patients", type=int, default=500, help="how many (default 500)")
        parser.add_argument("--seed", type=int, default=1, help="same seed, same patients")
        parser.add_argument(
            "--if-empty", action="store_true", help="do nothing when any patient exists"
        )

    def handle(self, *args, patients: int, seed: int, if_empty: bool, **options):
        if patients < 1:
            raise CommandError("--patients must be at least 1")
        # Seeded mobile numbers are valid numbers, so some belong to real people: demo data
        # must never sit where a worker can really text or push.
        if not settings.DEBUG or settings.TWILIO_ACCOUNT_SID or settings.LINE_CHANNEL_ACCESS_TOKEN:
            raise CommandError(
                "seed_demo runs only with DEBUG on and no TWILIO_ACCOUNT_SID or "
                "LINE_CHANNEL_ACCESS_TOKEN set: demo phone numbers may belong to real people."
            )
        if if_empty and Patient.objects.exists():
            self.stdout.write("Patients already on file; seed_demo --if-empty added none.")
            return
        started = clock.monotonic()
        # One moment for the whole run: the past, today and tomorrow all count from it.
        now = timezone.now()
        counts = demo_seed(seed=seed, count=patients, now=now)
        counts.update(
            demo_days(
                seed=seed,
                today=timezone.localdate(now),
                first=counts["first"],
                last=counts["last"],
                now=now,
            )
        )
        took = clock.monotonic() - started
        self.stdout.write(
            f"Seeded {counts['patients']:,} patients "
            f"({chart_number(counts['first'])}–{chart_number(counts['last'])}) in {took:.1f} s: "
            f"{counts['visits']:,} visits, {counts['prescriptions']:,} prescriptions, "
            f"{counts['refill_windows']:,} refill windows, {counts['procedures']:,} procedures, "
            f"{counts['appointments']:,} appointments, {counts['condition_tags']:,} condition "
            f"tags, {counts['consent_entries']:,} consent entries; the last {HISTORY_DAYS} days: "
            f"{counts['history_messages']:,} messages ({counts['history_attempts']:,} attempts), "
            f"{counts['history_skips']:,} skipped; today and tomorrow: "
            f"{counts['day_appointments']:,} more appointments, {counts['day_reminders']:,} "
            f"reminders, {counts['day_skips']:,} skipped."
        )
