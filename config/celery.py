import os

from celery import Celery

# As the web server (config/wsgi.py): a worker started without the variable must not run with
# the development secrets and DEBUG; `make run` and the tests set it.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

app = Celery("meterbill")
# Every CELERY_* Django setting configures the app (see config/settings/base.py).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
