import os

from django.core.asgi import get_asgi_application

from clinic_crm.keycheck import keys_verify

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinic_crm.settings")
application = get_asgi_application()
# Refuse to serve with keys that don't match the stored data (raises, naming the key).
keys_verify()
