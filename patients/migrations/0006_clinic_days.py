# Closure dates and make-up workdays (ClinicDay), and the blind index for the front desk's
# "last four digits of the phone and the birth date" search, filled for existing patients.

import clinic_crm.fields
import clinic_crm.validators
from django.db import migrations, models

from clinic_crm import crypto
from clinic_crm.normalise import SOURCE_SEPARATOR, phone_tail_birth_key

BATCH = 1000


def fill_phone4_birth_index(apps, schema_editor):
    """Existing patients: index (last four digits of the phone, birth date), in batches.

    Written against the historical model, so the index is computed here as BlindIndexField
    does it: the phone decrypted with its row's context, joined to the ISO birth date, put in
    lookup form and HMAC'd under BLIND_INDEX_KEY in the domain "phone+birth_date".
    """
    Patient = apps.get_model("patients", "Patient")
    rows = Patient._base_manager.using(schema_editor.connection.alias).filter(
        phone_bidx__isnull=False, birth_date__isnull=False
    )
    table = Patient._meta.db_table
    quote = schema_editor.connection.ops.quote_name
    keyring = crypto.keyring()
    last_pk = 0
    while True:
        batch = list(
            rows.filter(pk__gt=last_pk).order_by("pk").values_list("pk", "uuid", "phone", "birth_date")[:BATCH]
        )
        if not batch:
            break
        last_pk = batch[-1][0]
        changed = []
        for pk, uuid, phone, born in batch:
            token = getattr(phone, "token", phone)
            plain = keyring.decrypt(token, f"{table}.phone.{uuid}")
            key = phone_tail_birth_key(SOURCE_SEPARATOR.join((plain, born.isoformat())))
            if key:
                changed.append((crypto.blind_index("phone+birth_date", key), pk))
        if not changed:
            continue
        with schema_editor.connection.cursor() as cursor:
            if schema_editor.connection.vendor == "postgresql":
                # One statement per batch, joined on the primary key.
                values = ", ".join(["(%s, %s)"] * len(changed))
                cursor.execute(
                    f"UPDATE {quote(table)} AS p SET {quote('phone4_birth_bidx')} = v.digest "
                    f"FROM (VALUES {values}) AS v(digest, id) WHERE p.id = v.id",
                    [item for pair in changed for item in pair],
                )
            else:
                cursor.executemany(
                    f"UPDATE {quote(table)} SET {quote('phone4_birth_bidx')} = %s WHERE id = %s",
                    changed,
                )


class Migration(migrations.Migration):

    dependencies = [
        ('patients', '0005_appointment_confirmation'),
    ]

    operations = [
        # Filled before it is indexed: one index build instead of an index insertion per row.
        migrations.AddField(
            model_name='patient',
            name='phone4_birth_bidx',
            field=clinic_crm.fields.BlindIndexField(blank=True, db_index=False, editable=False, max_length=64, null=True),
        ),
        migrations.RunPython(fill_phone4_birth_index, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name='patient',
            name='phone4_birth_bidx',
            field=clinic_crm.fields.BlindIndexField(blank=True, db_index=True, editable=False, max_length=64, null=True),
        ),
        migrations.CreateModel(
            name='ClinicDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('date', models.DateField(unique=True, verbose_name='date')),
                ('open', models.BooleanField(default=False, editable=False, verbose_name='clinic open')),
                ('kind', models.CharField(choices=[('holiday', 'national holiday'), ('typhoon', 'typhoon day'), ('leave', "doctor's leave"), ('closed', 'other closure'), ('workday', 'make-up workday')], default='holiday', max_length=10, verbose_name='kind')),
                ('note', models.CharField(blank=True, max_length=100, validators=[clinic_crm.validators.validate_single_line], verbose_name='note')),
            ],
            options={
                'verbose_name': 'closure or make-up day',
                'verbose_name_plural': 'closure and make-up days',
                'ordering': ['date'],
                'constraints': [models.CheckConstraint(condition=models.Q(models.Q(('kind', 'workday'), ('open', True)), models.Q(('open', False), models.Q(('kind', 'workday'), _negated=True)), _connector='OR'), name='clinic_day_open_iff_workday', violation_error_message='Only a make-up workday opens the clinic.')],
            },
        ),
    ]
